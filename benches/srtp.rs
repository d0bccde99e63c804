//! Per-packet cost of SRTP (RFC 3711, AES_CM_128_HMAC_SHA1_80 and _32) as
//! `src/media/srtp.rs` runs it: libsrtp2 (crate `srtp`, OpenSSL's AES) on
//! a 20 ms G.711 packet (12-byte header, 160-byte payload) copied into a
//! buffer allocated once, then transformed in place. The choice of crate
//! behind these figures is in docs/dependencies.md ("SRTP").

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use srtp::{CryptoPolicy, Session, StreamPolicy};

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

fn suite(c: &mut Criterion, name: &str, rtp_policy: CryptoPolicy) {
    let key: Vec<u8> = (0..30).collect();
    let policy = StreamPolicy {
        rtp: rtp_policy,
        rtcp: CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        key: &key,
        ..Default::default()
    };
    let mut g = c.benchmark_group(format!("srtp/{name}"));
    g.throughput(Throughput::Elements(1));

    // Protect: one fresh sequence number per iteration, as a stream does.
    let mut tx = Session::with_outbound_template(policy).unwrap();
    let mut buf = Vec::with_capacity(1600);
    let mut seq = 0u16;
    let mut plain = rtp(0);
    g.bench_function("protect_rtp", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            plain[2..4].copy_from_slice(&seq.to_be_bytes());
            buf.clear();
            buf.extend_from_slice(&plain);
            tx.protect(&mut buf).unwrap();
            buf.len()
        })
    });

    // Unprotect: a pre-encrypted stream long enough that the replay
    // window never refuses (a fresh receiver per pass over it).
    let mut tx = Session::with_outbound_template(policy).unwrap();
    let wire: Vec<Vec<u8>> = (0..u16::MAX)
        .map(|s| {
            let mut p = rtp(s);
            tx.protect(&mut p).unwrap();
            p
        })
        .collect();
    let mut rx = Session::with_inbound_template(policy).unwrap();
    let mut next = 0usize;
    g.bench_function("unprotect_rtp", |b| {
        b.iter(|| {
            if next == wire.len() {
                rx = Session::with_inbound_template(policy).unwrap();
                next = 0;
            }
            buf.clear();
            buf.extend_from_slice(&wire[next]);
            next += 1;
            rx.unprotect(&mut buf).unwrap();
            buf.len()
        })
    });
    g.finish();
}

fn srtp_suites(c: &mut Criterion) {
    suite(
        c,
        "aes_cm_128_hmac_sha1_80",
        CryptoPolicy::aes_cm_128_hmac_sha1_80(),
    );
    suite(
        c,
        "aes_cm_128_hmac_sha1_32",
        CryptoPolicy::aes_cm_128_hmac_sha1_32(),
    );
}

criterion_group!(benches, srtp_suites);
criterion_main!(benches);
