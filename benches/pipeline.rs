//! Per-call costs on the hot paths, single core:
//! `cargo bench --bench pipeline`.
//!
//! - `analyse_1s_8k`: the full feature pipeline and estimate over one second
//!   of 8 kHz speech (the issue 3 target is ≤ 0.25 ms per second of audio);
//!   `analyse_1s_8k_model` the same with the embedded model scoring every 250 ms.
//! - `rtp_decode_analyse_packet`: one 20 ms G.711 packet through RTP
//!   validation, μ-law decoding and analysis: the core of `Call::handle_rtp`
//!   (its latch and jitter buffer are not in this bench).
//! - `parse_invite`: one typical INVITE with SDP through the SIP parser.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use emonav::{RtpEvent, RtpReceiver};
use emonav_dsp::{g711, Analyzer};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn speech_1s() -> Vec<i16> {
    let ulaw = fixture("fixtures/agitated.ul");
    let mut pcm = vec![0i16; 8000];
    g711::decode_ulaw(&ulaw[8000..16000], &mut pcm);
    pcm
}

fn analyse(c: &mut Criterion) {
    let pcm = speech_1s();
    let mut g = c.benchmark_group("dsp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("analyse_1s_8k", |b| {
        let mut a = Analyzer::new(8000);
        a.push(&pcm);
        b.iter(|| {
            a.push(black_box(&pcm));
            black_box(a.estimate())
        })
    });
    // As a call runs it: the embedded model re-scored every 250 ms.
    g.bench_function("analyse_1s_8k_model", |b| {
        let model = std::sync::Arc::new(emonav_dsp::model::embedded(8000));
        let mut a =
            Analyzer::with_estimator(8000, Box::new(emonav_dsp::ModelEstimator::new(model)));
        a.push(&pcm);
        b.iter(|| {
            a.push(black_box(&pcm));
            black_box(a.estimate())
        })
    });
    // The costly stages alone, on one speech frame.
    let window: Vec<f32> = pcm[4000..4320]
        .iter()
        .map(|&v| v as f32 / 32768.0)
        .collect();
    g.throughput(Throughput::Elements(1));
    g.bench_function("pitch_frame_8k", |b| {
        let mut p = emonav_dsp::pitch::PitchTracker::new(8000, 320);
        b.iter(|| black_box(p.process(black_box(&window))))
    });
    g.bench_function("formants_frame_8k", |b| {
        let mut f = emonav_dsp::formants::FormantTracker::new(8000, 200);
        b.iter(|| black_box(f.process(black_box(&window))))
    });
    g.bench_function("spectral_frame_8k", |b| {
        let mut s = emonav_dsp::spectral::SpectralAnalyzer::new(8000, 200);
        b.iter(|| black_box(s.process(black_box(&window))))
    });
    g.finish();
}

fn packet(c: &mut Criterion) {
    let ulaw = fixture("fixtures/agitated.ul");
    let packets: Vec<Vec<u8>> = ulaw
        .chunks(160)
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&(i as u16).to_be_bytes());
            p.extend_from_slice(&(i as u32 * 160).to_be_bytes());
            p.extend_from_slice(&1u32.to_be_bytes());
            p.extend_from_slice(chunk);
            p
        })
        .collect();
    c.bench_function("rtp_decode_analyse_packet", |b| {
        let mut rx = RtpReceiver::new(0, None);
        let mut a = Analyzer::new(8000);
        let mut pcm = [0i16; 2048];
        let mut buf = [0u8; 172];
        let mut i = 0usize;
        let mut seq = 0u16;
        b.iter(|| {
            let src = &packets[i % packets.len()];
            let p = &mut buf[..src.len()];
            p.copy_from_slice(src);
            // Keep the sequence moving so that no packet counts as a duplicate.
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            seq = seq.wrapping_add(1);
            i += 1;
            if let RtpEvent::Audio { payload, .. } = rx.handle(black_box(p)) {
                g711::decode_ulaw(payload, &mut pcm[..payload.len()]);
                a.push(&pcm[..payload.len()]);
            }
            black_box(a.estimate())
        })
    });
}

fn parse(c: &mut Criterion) {
    let invite = fixture("conformance/freeswitch_invite_record_route.sip");
    c.bench_function("parse_invite", |b| {
        b.iter(|| emonav_sip::message::parse_datagram(black_box(&invite)).unwrap())
    });
}

criterion_group!(benches, analyse, packet, parse);
criterion_main!(benches);
