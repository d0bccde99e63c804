//! What every call shares, derived once from the profile: transaction
//! timers (RFC 3261 §17.1.1.1), our Via sent-by and Contact per transport
//! (§18.1.1, §20.10), codecs, policy, models and credentials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use emonav_dsp::Model;

use super::uri_host;
use crate::adapt::LineAdapter;
use crate::config::{BridgeMedia, DialogCredential, Fallback, Profile, SrtpMode, TransferMode};
use crate::policy::Policy;
use crate::sdp::CodecName;
use crate::trust::TrustedSet;
use emonav_sip::dialog::uri_socket_addr;
use emonav_sip::message::{Uri, Via};
use emonav_sip::transaction::Timers;
use emonav_sip::transport::Transport;

/// Settings shared by every call, derived once from the profile. A reload
/// clones them with the new policy (src/lifecycle.rs); a call keeps the
/// ones it started with.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Transaction timers.
    pub timers: Timers,
    /// Delay before answering.
    pub answer_delay: Duration,
    /// Codecs accepted (the offer's order picks among them).
    pub codecs: Vec<CodecName>,
    /// Routing policy (its deadline is a budget of listening time, see [`Decider`](crate::policy::Decider)).
    pub policy: Policy,
    /// Wait for a final NOTIFY after sending REFER.
    pub notify_timeout: Duration,
    /// What to do when a transfer fails.
    pub fallback: Fallback,
    /// End the call after this long without RTP (`None`: never).
    pub rtp_timeout: Option<Duration>,
    /// Jitter-buffer playout delay.
    pub jitter_delay: Duration,
    /// Send 20 ms silence packets to the caller (RTP keepalive).
    pub send_silence: bool,
    /// Time between keepalive packets (`[media] keepalive_interval_ms`).
    pub keepalive_interval: Duration,
    /// Send RTP only where the caller's RTP comes from (`[media] symmetric_rtp`).
    pub symmetric_rtp: bool,
    /// `[media] srtp`: whether calls' media is SRTP (RFC 3711/4568).
    pub(crate) srtp: SrtpMode,
    /// `[security]` on: the only addresses our media may go to, besides
    /// the call's own signalling source (`trusted_sources`, `trusted_media`).
    pub(crate) media_trust: Option<Arc<TrustedSet>>,
    /// Our sent-by for Via (advertised address and SIP port).
    pub sip_addr: SocketAddr,
    /// Our Contact URI (for UDP; see [`CallSettings::contact_uri`]).
    pub contact: Uri,
    /// Our SIP over TLS port (`[sip] tls_listen`), for Via and Contact on TLS.
    pub tls_port: Option<u16>,
    /// `Server`/`User-Agent` value.
    pub user_agent: String,
    /// The emotion models calls run: G.711 (8 kHz) and Opus (16 kHz).
    pub models: [Arc<Model>; 2],
    /// Line adaptation for each model (`[adapt]`; src/adapt.rs).
    pub lines: [Arc<LineAdapter>; 2],
    /// Credentials for peers that challenge our REFER or BYE, in the order
    /// tried ([`Profile::dialog_credentials`]).
    pub credentials: Vec<DialogCredential>,
    /// Smallest session interval accepted (RFC 4028 `Min-SE`), seconds.
    pub min_se: u32,
    /// How a decided call reaches its queue (`[transfer] transfer_mode`).
    pub transfer_mode: TransferMode,
    /// Where our INVITEs to queues go (`[transfer] outbound_proxy`): its URI
    /// (for the `Route`) and address.
    pub outbound_proxy: Option<(Uri, SocketAddr)>,
    /// How long a queue may ring before we CANCEL it.
    pub queue_answer_timeout: Duration,
    /// How long the congestion tone plays before a failed call's BYE.
    pub failure_tone: Duration,
    /// B2BUA media: direct, relayed, or relayed when direct is refused.
    pub bridge_media: BridgeMedia,
}

impl CallSettings {
    /// Derive from a profile; `sip_port` is the port actually bound.
    pub fn from_profile(p: &Profile, sip_port: u16) -> Self {
        let sip_addr = SocketAddr::new(p.advertised_ip(), sip_port);
        let contact = Uri::parse(&format!(
            "sip:{}@{}:{sip_port}",
            p.sip.user,
            uri_host(sip_addr.ip())
        ))
        .expect("contact built from a validated profile");
        let models = [p.model(8000), p.model(16000)];
        let file = |suffix: &str| {
            p.adapt_file().map(|f| {
                let stem = f.file_stem().unwrap_or_default().to_string_lossy();
                let ext = f.extension().map(|e| format!(".{}", e.to_string_lossy()));
                f.with_file_name(format!("{stem}{suffix}{}", ext.unwrap_or_default()))
            })
        };
        let lines = [
            Arc::new(LineAdapter::new(&models[0], &p.adapt, file(""))),
            Arc::new(LineAdapter::new(&models[1], &p.adapt, file("-16k"))),
        ];
        Self {
            timers: Timers {
                t1: p.t1(),
                t2: p.t2(),
                ..Timers::default()
            },
            answer_delay: Duration::from_millis(p.sip.answer_delay_ms),
            codecs: p.media.codecs.clone(),
            policy: p.policy.clone(),
            notify_timeout: Duration::from_millis(p.transfer.notify_timeout_ms),
            fallback: p.transfer.fallback,
            rtp_timeout: (p.media.rtp_timeout_ms > 0)
                .then(|| Duration::from_millis(p.media.rtp_timeout_ms)),
            jitter_delay: Duration::from_millis(p.media.jitter_ms),
            send_silence: p.media.send_silence,
            keepalive_interval: Duration::from_millis(p.media.keepalive_interval_ms),
            symmetric_rtp: p.media.symmetric_rtp,
            srtp: p.media.srtp,
            media_trust: p.security.media_set().map(Arc::new),
            sip_addr,
            contact,
            tls_port: p.sip.tls_listen.map(|a| a.port()),
            user_agent: p.sip.user_agent.clone(),
            models,
            lines,
            credentials: p.dialog_credentials(),
            min_se: p.sip.min_se_s,
            transfer_mode: p.transfer.transfer_mode,
            // `[sip] outbound_proxy` carries every out-of-dialog request
            // unless the transfer section names its own.
            outbound_proxy: p
                .transfer
                .outbound_proxy_uri()
                .or_else(|| {
                    p.sip
                        .outbound_proxy
                        .as_deref()
                        .and_then(|u| Uri::parse(u).ok())
                })
                .and_then(|u| uri_socket_addr(&u).map(|a| (u, a))),
            queue_answer_timeout: Duration::from_millis(p.transfer.queue_answer_timeout_ms),
            failure_tone: Duration::from_millis(p.transfer.failure_tone_ms),
            bridge_media: p.transfer.media,
        }
    }

    /// Our Contact URI for a dialog on `transport`: `;transport=tcp` for
    /// TCP, so that the peer's requests come back over TCP (RFC 3261 §18.1.1).
    pub fn contact_uri(&self, transport: Transport) -> Uri {
        let mut uri = self.contact.clone();
        if transport == Transport::Tls {
            uri.port = self.tls_port;
        }
        if let Some(t) = transport.uri_param() {
            uri.params.set("transport", Some(t));
        }
        uri
    }

    /// A Via for a new request of ours on `transport`, with a fresh branch.
    pub fn via(&self, transport: Transport) -> Via {
        let mut via = Via {
            transport: transport.via_token().into(),
            host: uri_host(self.sip_addr.ip()),
            port: match transport {
                Transport::Tls => self.tls_port,
                _ => Some(self.sip_addr.port()),
            },
            params: Default::default(),
        };
        via.params.set(
            "branch",
            Some(&format!("z9hG4bK{:016x}", fastrand::u64(..))),
        );
        via.params.set("rport", None);
        via
    }
}
