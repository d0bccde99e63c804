//! The fuzz targets (`emonav::fuzz`, also run by libFuzzer from `fuzz/`)
//! on stable, as CI runs them: each target replays its committed corpus
//! (`fuzz/corpus/NAME/`, plus the RFC 4475 messages for the SIP targets),
//! then mutates it at random for a bounded time (`EMONAV_FUZZ_SECS`, 10 s
//! by default; the seed is printed and `EMONAV_FUZZ_SEED` replays it). An
//! input that panics is written to `target/fuzz-crashes/` and fails the
//! test; a fixed one goes into the corpus as a regression case.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd.map_while(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let mut c = files(&root().join("fuzz/corpus").join(name));
    if name.starts_with("sip_") {
        c.extend(files(&root().join("tests/conformance/rfc4475")));
    }
    c
}

/// Tokens a SIP/SDP/RTP parser branches on, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b": ",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b"SIP/2.0",
    b"INVITE",
    b"ACK",
    b"BYE",
    b"CANCEL",
    b"REFER",
    b"NOTIFY",
    b"Content-Length: ",
    b"Via: SIP/2.0/UDP ",
    b";branch=z9hG4bK",
    b";tag=",
    b"0",
    b"-1",
    b"4294967295",
    b"18446744073709551616",
    b"65535",
    b"m=audio ",
    b"RTP/SAVP",
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
    b"c=IN IP4 ",
    b"c=IN IP6 ::",
    b"a=rtcp-mux",
    b"Digest ",
    b"nonce=\"",
    b"algorithm=SHA-256",
    b"qop=\"auth,auth-int\"",
    b"\n--step--\n",
    b"RTP:\x80\x00",
    b"RTCP:\x80\xc8\x00\x06",
    b"WAIT:3000",
    b"\x00",
    b"\xff\xff\xff\xff",
    b"\x90",
];

fn mutate(input: &[u8], corpus: &[Vec<u8>], rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = v.len();
        match rng.u8(0..8) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                v[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                v[i] = rng.u8(..);
            }
            2 if len > 0 => {
                let a = rng.usize(..len);
                let b = (a + rng.usize(0..=64)).min(len);
                v.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.usize(..len);
                let b = (a + rng.usize(1..=64)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.usize(..=v.len());
                for _ in 0..rng.usize(1..=8) {
                    v.splice(at..at, chunk.iter().copied());
                }
            }
            4 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                let at = rng.usize(..=len);
                v.splice(at..at, t.iter().copied());
            }
            5 if !corpus.is_empty() => {
                // Splice: our head, another input's tail.
                let other = &corpus[rng.usize(..corpus.len())];
                let cut = rng.usize(..=len);
                let from = rng.usize(..=other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 => v.truncate(rng.usize(..=len)),
            _ => {
                let at = rng.usize(..=len);
                let n = rng.usize(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                v.splice(at..at, bytes);
            }
        }
    }
    v.truncate(64 * 1024);
    v
}

fn run_one(name: &str, target: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = root().join("target/fuzz-crashes");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{:016x}.bin", fastrand::u64(..)));
        std::fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {name} panicked on {} ({} bytes): {:?}",
            path.display(),
            input.len(),
            String::from_utf8_lossy(&input[..input.len().min(2000)])
        );
    }
}

fn fuzz(name: &str) {
    let target = emonav::fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .1;
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ is empty");
    for s in &seeds {
        run_one(name, target, s);
    }
    let secs: u64 = std::env::var("EMONAV_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("EMONAV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!(
        "fuzz {name}: {} seeds, {secs} s, EMONAV_FUZZ_SEED={seed}",
        seeds.len()
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    // Inputs that are mutated further: the seeds, and some of the mutants.
    let mut pool = seeds.clone();
    while Instant::now() < deadline {
        let base = &pool[rng.usize(..pool.len())];
        let input = mutate(base, &seeds, &mut rng);
        run_one(name, target, &input);
        if pool.len() < 4096 && rng.u8(..) < 16 {
            pool.push(input);
        }
        runs += 1;
    }
    eprintln!("fuzz {name}: {runs} inputs, no panic");
    assert!(runs > 0);
}

#[test]
fn fuzz_sip_datagram() {
    fuzz("sip_datagram");
}

#[test]
fn fuzz_sip_stream() {
    fuzz("sip_stream");
}

#[test]
fn fuzz_sdp() {
    fuzz("sdp");
}

#[test]
fn fuzz_rtp_rtcp() {
    fuzz("rtp_rtcp");
}

#[test]
fn fuzz_digest() {
    fuzz("digest");
}

#[test]
fn fuzz_endpoint() {
    fuzz("endpoint");
}

/// Every target has a libFuzzer twin in fuzz/fuzz_targets/ and a corpus.
#[test]
fn every_target_has_a_libfuzzer_target_and_a_corpus() {
    for (name, _) in emonav::fuzz::TARGETS {
        let t = root().join("fuzz/fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&t).unwrap_or_else(|_| panic!("{}", t.display()));
        assert!(
            text.contains(&format!("emonav::fuzz::{name}(")),
            "{}",
            t.display()
        );
        assert!(
            !files(&root().join("fuzz/corpus").join(name)).is_empty(),
            "{name}"
        );
    }
}
