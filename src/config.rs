//! Deployment profiles (`sip-profiles/*.toml`): what emonav listens on, which
//! codecs it accepts, and how it routes. Every key is documented in
//! `sip-profiles/default.toml`; this module only gives them types and defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use emonav_dsp::Model;
use serde::Deserialize;

use crate::policy::Policy;

mod referral_loop;
use crate::sdp::CodecName;
use emonav_sip::message::{Scheme, Uri};
use emonav_sip::transport::Transport;

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read profile {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key.
    #[error("invalid profile {path}: {message}")]
    Parse {
        /// Path.
        path: String,
        /// What serde/toml said (line and key included).
        message: String,
    },
    /// Keys that parse but do not make sense together.
    #[error("invalid profile {path}: {message}")]
    Invalid {
        /// Path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A whole profile.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// `[sip]`
    pub sip: SipConfig,
    /// `[media]`
    pub media: MediaConfig,
    /// `[http]`
    pub http: HttpConfig,
    /// `[policy]`
    pub policy: Policy,
    /// `[transfer]`
    pub transfer: TransferConfig,
    /// `[events]`
    pub events: EventsConfig,
    /// `[model]`
    pub model: ModelConfig,
    /// `[adapt]`
    pub adapt: AdaptConfig,
    /// `[shutdown]`
    pub shutdown: ShutdownConfig,
    /// `[security]`: trusted peers (src/trust.rs).
    pub security: crate::trust::SecurityConfig,
    /// `[history]`: caller history store (src/history/).
    pub history: crate::history::HistoryConfig,
    /// `[overload]`: admission control (src/overload.rs).
    pub overload: crate::overload::OverloadConfig,
    /// `[webhooks]`: alerts and call events POSTed to a receiver (src/webhook/).
    pub webhooks: crate::webhook::WebhookConfig,
    /// `[[registration]]`: accounts to keep registered (none by default).
    #[serde(rename = "registration")]
    pub registrations: Vec<RegistrationConfig>,
    /// The models `[model]` names (8 and 16 kHz), read when the profile was loaded.
    #[serde(skip)]
    loaded_models: [Option<Arc<Model>>; 2],
    /// `[adapt] file` resolved against the profile's folder.
    #[serde(skip)]
    adapt_file: Option<std::path::PathBuf>,
    /// The profile's folder, against which `[history] file` is resolved.
    #[serde(skip)]
    base_dir: std::path::PathBuf,
}

/// `[model]`: which emotion model a call runs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A model file written by `emonav train` for G.711 calls (8 kHz),
    /// relative to the profile's folder; `None` = the embedded default.
    pub file: Option<String>,
    /// Likewise for Opus calls (`emonav train --rate 16000`).
    pub wideband_file: Option<String>,
}

/// `[adapt]`: unsupervised adaptation to the line (src/adapt.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptConfig {
    /// Learn the line's feature statistics and score calls through them.
    pub enabled: bool,
    /// Calls seen before the statistics are used.
    pub min_calls: usize,
    /// Most recent calls the statistics are taken over.
    pub window: usize,
    /// How far calls are normalised to the line, in [0, 1] (0: not at all,
    /// 1: fully; in between blends the line's statistics with the model's).
    pub strength: f32,
    /// File the statistics persist in across restarts, relative to the
    /// profile's folder; unset = kept in memory only.
    pub file: Option<String>,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_calls: 200,
            window: 2000,
            strength: 0.5,
            file: None,
        }
    }
}

/// `[sip]`: signalling.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Address and port to listen on for SIP, for every transport of
    /// `transports` (UDP and TCP share the port).
    pub listen: SocketAddr,
    /// Transports to listen on (RFC 3261 §18); UDP is mandatory for now
    /// (registrations and stateless replies use the UDP socket).
    pub transports: Vec<Transport>,
    /// Address advertised in Contact, Via and SDP when it differs from the
    /// listen address (NAT); defaults to the listen address.
    pub external_address: Option<IpAddr>,
    /// SIP over TLS (RFC 3261 §26.2.1): address and port to listen on
    /// (a port of its own, 5061 by convention); `None` = no TLS.
    pub tls_listen: Option<SocketAddr>,
    /// Our certificate chain (PEM), shown to peers as server and client.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that peers' certificates must chain to: servers
    /// we connect to always; clients only with `tls_verify_clients`.
    /// Without it, no TLS connection is opened by us.
    pub tls_ca: Option<PathBuf>,
    /// Require a client certificate chaining to `tls_ca` (mutual TLS peering).
    pub tls_verify_clients: bool,
    /// DNS servers (address:port) for locating registrars (RFC 3263);
    /// empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// Where out-of-dialog REGISTERs go instead of the registrar URI's
    /// host (a SIP URI, located by RFC 3263 like the registrar would be).
    pub outbound_proxy: Option<String>,
    /// User part of our Contact and Referred-By URIs.
    pub user: String,
    /// Delay between `100 Trying` and `200 OK`, in ms (0 = answer at once).
    pub answer_delay_ms: u64,
    /// RFC 3261 T1 (RTT estimate) in ms; retransmission timers derive from it.
    pub t1_ms: u64,
    /// RFC 3261 T2 (max retransmit interval for non-INVITE) in ms.
    pub t2_ms: u64,
    /// Value of the `User-Agent`/`Server` header.
    pub user_agent: String,
    /// Smallest session interval we accept (RFC 4028 `Min-SE`), seconds: a
    /// `Session-Expires` below it is refused with `422`. At least 90.
    pub min_se_s: u32,
    /// Digest user name for our in-dialog requests (REFER, BYE) when a peer
    /// challenges them, whatever the realm; `None`: see [`Profile::dialog_credentials`].
    pub auth_username: Option<String>,
    /// Password going with `auth_username`.
    pub auth_password: Option<Secret>,
    /// Kernel buffers of the SIP UDP socket, each way, in KiB (`SO_RCVBUF`,
    /// `SO_SNDBUF`); 0 keeps the system's default.
    pub udp_buffer_kib: u32,
}

/// A password from a profile: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a password.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself, for the Digest computation.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// `[[registration]]`: one account emonav keeps registered (RFC 3261 §10),
/// so that a PBX or carrier can route calls to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Registrar SIP URI; REGISTERs go to its host and port (an IP literal,
    /// or a name resolved with A/AAAA records: no RFC 3263 SRV lookup).
    pub registrar: String,
    /// Address of record, in To and From.
    pub aor: String,
    /// Digest user name.
    pub username: String,
    /// Digest password.
    pub password: Secret,
    /// Expiry asked for, in seconds.
    #[serde(default = "default_expires")]
    pub expires: u32,
    /// User part of the Contact bound; `None`: `[sip] user`.
    pub contact_user: Option<String>,
}

fn default_expires() -> u32 {
    3600
}

impl RegistrationConfig {
    /// The registrar URI, parsed (validated when the profile was loaded).
    pub fn registrar_uri(&self) -> Result<Uri, String> {
        sip_uri("registrar", &self.registrar)
    }

    /// The address of record, parsed.
    pub fn aor_uri(&self) -> Result<Uri, String> {
        sip_uri("aor", &self.aor)
    }
}

fn sip_uri(key: &str, value: &str) -> Result<Uri, String> {
    let uri = Uri::parse(value).map_err(|e| format!("registration.{key} {value:?}: {e}"))?;
    if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips) {
        return Err(format!(
            "registration.{key} {value:?}: a sip: or sips: URI is needed"
        ));
    }
    Ok(uri)
}

/// Credentials for a Digest challenge to an in-dialog request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogCredential {
    /// The realm they answer; `None`: any.
    pub realm: Option<String>,
    /// User name.
    pub username: String,
    /// Password.
    pub password: Secret,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5060".parse().expect("static address"),
            transports: vec![Transport::Udp, Transport::Tcp],
            external_address: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_verify_clients: false,
            dns_servers: Vec::new(),
            outbound_proxy: None,
            user: "emonav".into(),
            answer_delay_ms: 0,
            t1_ms: 500,
            t2_ms: 4000,
            user_agent: concat!("emonav/", env!("CARGO_PKG_VERSION")).into(),
            min_se_s: 90,
            auth_username: None,
            auth_password: None,
            udp_buffer_kib: 0,
        }
    }
}

/// `[media]`: RTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Lowest RTP port (even).
    pub rtp_port_min: u16,
    /// Highest RTP port.
    pub rtp_port_max: u16,
    /// Codecs we accept; the offer's order picks among them (`sdp::negotiate`).
    pub codecs: Vec<CodecName>,
    /// End the call when no RTP has arrived for this long after the first
    /// packet, in ms (0 = never).
    pub rtp_timeout_ms: u64,
    /// Jitter-buffer playout delay, ms: packets are put back in order and
    /// released this long after they are due (0..=500).
    pub jitter_ms: u64,
    /// Send 20 ms RTP packets of silence back to the caller, so that
    /// RTP-inactivity timers of PBXs do not end the call.
    pub send_silence: bool,
    /// Time between those silence packets, ms (20 = a continuous stream;
    /// a multiple of 20, at most 10,000): a PBX's inactivity timer counts
    /// seconds, so one packet a second keeps it satisfied at 1/50 the cost.
    pub keepalive_interval_ms: u64,
    /// Symmetric RTP (RFC 4961, "comedia"): our RTP goes only where the
    /// caller's RTP comes from, so nothing is sent before it has arrived.
    pub symmetric_rtp: bool,
    /// SRTP (RFC 3711) with SDES keys (RFC 4568): off, optional or required.
    pub srtp: SrtpMode,
}

/// `[media] srtp`: whether calls' media is encrypted (RFC 3711, keys by
/// RFC 4568 `a=crypto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SrtpMode {
    /// Plain RTP only: `RTP/SAVP` offers get 488, `a=crypto` is ignored.
    #[default]
    Off,
    /// SRTP when the offer has a usable `a=crypto`, plain RTP otherwise.
    Optional,
    /// SRTP only: an offer without a usable `a=crypto` gets 488.
    Required,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            rtp_port_min: 20000,
            rtp_port_max: 20999,
            // G.711 first: what a PBX trunk offers; Opus for callers who offer nothing else.
            codecs: vec![CodecName::Pcmu, CodecName::Pcma, CodecName::Opus],
            rtp_timeout_ms: 30_000,
            jitter_ms: 60,
            send_silence: true,
            keepalive_interval_ms: 20,
            symmetric_rtp: false,
            srtp: SrtpMode::Off,
        }
    }
}

/// `[http]`: metrics and health.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve `/healthz` and `/metrics` on; `None` disables it.
    pub listen: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: Some("127.0.0.1:9060".parse().expect("static address")),
        }
    }
}

/// What to do when a transfer fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Try the default queue once (unless it was the one that failed), then hang up politely.
    DefaultQueueThenHangup,
    /// Hang up politely at once.
    Hangup,
}

/// How a decided call reaches its queue (`[transfer] transfer_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// In-dialog REFER only (RFC 3515).
    Refer,
    /// Third-party call control (RFC 3725): emonav calls the queue and
    /// stays in the signalling path as a B2BUA; media flows caller ↔ queue.
    B2bua,
    /// REFER, and third-party call control when REFER cannot pass (the
    /// caller's `Allow` lacks REFER, or the REFER is refused or times out).
    ReferThenB2bua,
    /// Publish the decision (HTTP `/decisions/{key}`, headers of our BYE)
    /// and hang up: the PBX routes the call itself.
    DecisionOnly,
}

impl TransferMode {
    /// The profile's spelling: `refer`, `b2bua`, `refer_then_b2bua`, `decision_only`.
    pub fn name(self) -> &'static str {
        match self {
            TransferMode::Refer => "refer",
            TransferMode::B2bua => "b2bua",
            TransferMode::ReferThenB2bua => "refer_then_b2bua",
            TransferMode::DecisionOnly => "decision_only",
        }
    }
}

/// Where a B2BUA transfer's media flows (`[transfer] media`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeMedia {
    /// Re-INVITE the caller with the queue's SDP; a caller that refuses it
    /// hears the failure tone.
    Direct,
    /// Never re-INVITE the caller: emonav relays the RTP between the legs.
    Relay,
    /// Direct, and the relay when the caller refuses the re-INVITE (or
    /// does not answer it, or answers without SDP).
    Auto,
}

impl BridgeMedia {
    /// The profile's spelling, also used in call records.
    pub fn name(self) -> &'static str {
        match self {
            BridgeMedia::Direct => "direct",
            BridgeMedia::Relay => "relay",
            BridgeMedia::Auto => "auto",
        }
    }
}

/// `[transfer]`: how a decided call reaches its queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// How long to wait, from sending REFER, for a final NOTIFY (ms).
    pub notify_timeout_ms: u64,
    /// What to do when the transfer fails.
    pub fallback: Fallback,
    /// REFER, B2BUA (RFC 3725), REFER then B2BUA, or decision only.
    pub transfer_mode: TransferMode,
    /// Where our INVITEs to queues go (B2BUA): a SIP URI with an IP literal
    /// host, sent a `Route` with `;lr`; `None`: the queue URI's host when it
    /// is an IP literal, else the caller's previous hop.
    pub outbound_proxy: Option<String>,
    /// How long a queue may ring before we CANCEL and try the next (ms).
    pub queue_answer_timeout_ms: u64,
    /// How long a caller no queue could take hears the congestion tone
    /// before our BYE (ms); 0: BYE at once.
    pub failure_tone_ms: u64,
    /// B2BUA: media caller <-> queue directly, relayed by emonav, or
    /// directly with the relay as the fallback.
    pub media: BridgeMedia,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            notify_timeout_ms: 10_000,
            fallback: Fallback::DefaultQueueThenHangup,
            transfer_mode: TransferMode::Refer,
            outbound_proxy: None,
            queue_answer_timeout_ms: 30_000,
            failure_tone_ms: 3_000,
            media: BridgeMedia::Auto,
        }
    }
}

impl TransferConfig {
    /// `outbound_proxy`, parsed (validated when the profile was loaded).
    pub fn outbound_proxy_uri(&self) -> Option<Uri> {
        self.outbound_proxy
            .as_deref()
            .and_then(|p| Uri::parse(p).ok())
    }
}

/// `[events]`: where the per-call JSON event lines go.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// File to append JSON lines to; `None` = standard output.
    pub file: Option<String>,
}

/// `[shutdown]`: what SIGTERM/SIGINT do (src/lifecycle.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest wait, from the first signal, for the calls in progress to
    /// reach their decision and transfer; also the `Retry-After` (seconds)
    /// of the 503 that new INVITEs and OPTIONS get meanwhile.
    pub drain_timeout_s: u32,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_s: 60,
        }
    }
}

impl Profile {
    /// Read and validate a profile file.
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_in(&text, &path.display().to_string(), base)
    }

    /// Parse and validate profile text; `origin` names it in errors, and a
    /// model file is looked for relative to the current folder.
    pub fn from_toml(text: &str, origin: &str) -> Result<Profile, ConfigError> {
        Self::from_toml_in(text, origin, Path::new("."))
    }

    fn from_toml_in(text: &str, origin: &str, base: &Path) -> Result<Profile, ConfigError> {
        let mut profile: Profile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        profile.validate().map_err(invalid)?;
        for f in [
            &mut profile.sip.tls_cert,
            &mut profile.sip.tls_key,
            &mut profile.sip.tls_ca,
        ] {
            *f = f.as_ref().map(|p| base.join(p));
        }
        // Unreadable certificates fail the load (and a reload), not the first call.
        crate::tls::Tls::from_config(&profile.sip).map_err(|e| invalid(e.to_string()))?;
        let files = [
            ("model.file", profile.model.file.clone(), 8000),
            (
                "model.wideband_file",
                profile.model.wideband_file.clone(),
                16000,
            ),
        ];
        for (slot, (key, file, rate)) in files.into_iter().enumerate() {
            let Some(file) = file else { continue };
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(format!("{key} {}: {e}", path.display())))?;
            let model = Model::from_json(&text)
                .map_err(|e| invalid(format!("{key} {}: {e}", path.display())))?;
            if model.sample_rate != rate {
                return Err(invalid(format!(
                    "{key} {}: trained at {} Hz, this key takes a {rate} Hz model",
                    path.display(),
                    model.sample_rate
                )));
            }
            profile.loaded_models[slot] = Some(Arc::new(model));
        }
        profile.adapt_file = profile.adapt.file.as_ref().map(|f| base.join(f));
        profile.base_dir = base.to_path_buf();
        // The statistics file is rewritten as calls end: it must not be a
        // file the profile reads or appends to for anything else.
        if let Some(f) = &profile.adapt_file {
            let others = [
                (
                    "model.file",
                    profile.model.file.as_ref().map(|m| base.join(m)),
                ),
                (
                    "model.wideband_file",
                    profile.model.wideband_file.as_ref().map(|m| base.join(m)),
                ),
                (
                    "events.file",
                    profile.events.file.as_ref().map(std::path::PathBuf::from),
                ),
            ];
            for (key, other) in others {
                let plain = |p: &Path| {
                    p.components()
                        .filter(|c| !matches!(c, std::path::Component::CurDir))
                        .collect::<std::path::PathBuf>()
                };
                if other.is_some_and(|o| plain(&o) == plain(f)) {
                    return Err(invalid(format!(
                        "adapt.file {} is also {key}: the line statistics would overwrite it",
                        f.display()
                    )));
                }
            }
        }
        Ok(profile)
    }

    /// The profile's folder.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Where `[adapt] file` points, resolved against the profile's folder.
    pub fn adapt_file(&self) -> Option<&Path> {
        self.adapt_file.as_deref()
    }

    /// The emotion model calls analysed at `rate` run (16000 for Opus, else
    /// 8000): the profile's file, or the embedded default.
    pub fn model(&self, rate: u32) -> Arc<Model> {
        let slot = usize::from(rate == 16000);
        self.loaded_models[slot]
            .clone()
            .unwrap_or_else(|| Arc::new(emonav_dsp::model::embedded(rate)))
    }

    fn validate(&self) -> Result<(), String> {
        self.webhooks.validate()?;
        if let Some(p) = &self.sip.outbound_proxy {
            emonav_sip::message::Uri::parse(p)
                .map_err(|e| format!("sip.outbound_proxy: {p:?} is not a SIP URI: {e}"))?;
        }
        if self.history.backend == crate::history::Backend::Postgres
            && self
                .history
                .postgres_url
                .parse::<tokio_postgres::Config>()
                .is_err()
        {
            return Err("history.postgres_url: not a PostgreSQL URL".into());
        }
        if self.media.rtp_port_min == 0 || self.media.rtp_port_min > self.media.rtp_port_max {
            return Err(format!(
                "media.rtp_port_min ({}) must be > 0 and <= media.rtp_port_max ({})",
                self.media.rtp_port_min, self.media.rtp_port_max
            ));
        }
        if self.media.jitter_ms > 500 {
            return Err(format!(
                "media.jitter_ms ({}) must be at most 500",
                self.media.jitter_ms
            ));
        }
        let k = self.media.keepalive_interval_ms;
        if !(20..=10_000).contains(&k) || k % 20 != 0 {
            return Err(format!(
                "media.keepalive_interval_ms ({k}) must be a multiple of 20 from 20 to 10000"
            ));
        }
        if self.media.codecs.is_empty() {
            return Err("media.codecs must name at least one codec".into());
        }
        if self.sip.transports.is_empty() {
            return Err(
                "sip.transports must name at least one transport (\"udp\", \"tcp\")".into(),
            );
        }
        for (i, t) in self.sip.transports.iter().enumerate() {
            if self.sip.transports[..i].contains(t) {
                return Err(format!("sip.transports lists {t:?} twice", t = t.name()));
            }
        }
        if !self.sip.transports.contains(&Transport::Udp) {
            return Err(
                "sip.transports must include \"udp\" (registrations use the UDP socket)".into(),
            );
        }
        if self.sip.transports.contains(&Transport::Tls) {
            return Err(
                "sip.transports: TLS has a port of its own, set sip.tls_listen instead".into(),
            );
        }
        if self.sip.tls_listen.is_some()
            && (self.sip.tls_cert.is_none() || self.sip.tls_key.is_none())
        {
            return Err("sip.tls_listen needs sip.tls_cert and sip.tls_key".into());
        }
        if self.sip.tls_verify_clients && self.sip.tls_ca.is_none() {
            return Err("sip.tls_verify_clients needs sip.tls_ca".into());
        }
        if self.sip.min_se_s < 90 {
            return Err("sip.min_se_s must be >= 90 (RFC 4028 §4)".into());
        }
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err("sip.t1_ms must be > 0 and sip.t2_ms >= sip.t1_ms".into());
        }
        if self.sip.auth_username.is_some() != self.sip.auth_password.is_some() {
            return Err("sip.auth_username and sip.auth_password go together".into());
        }
        for (i, r) in self.registrations.iter().enumerate() {
            let at = |m: String| format!("registration #{}: {m}", i + 1);
            r.registrar_uri().map_err(at)?;
            r.aor_uri().map_err(at)?;
            if r.username.is_empty() {
                return Err(at("registration.username is empty".into()));
            }
            if r.expires == 0 {
                return Err(at("registration.expires must be > 0".into()));
            }
            if let Some(u) = &r.contact_user {
                if u.is_empty() || u.contains(['@', ':', ';', '>', ' ']) {
                    return Err(at(format!(
                        "registration.contact_user {u:?} is not a URI user"
                    )));
                }
            }
        }
        self.security.validate(self.registrations.len())?;
        self.overload.validate()?;
        if let Some(p) = &self.transfer.outbound_proxy {
            let uri = Uri::parse(p).map_err(|e| format!("transfer.outbound_proxy {p:?}: {e}"))?;
            if emonav_sip::dialog::uri_socket_addr(&uri).is_none() {
                return Err(format!(
                    "transfer.outbound_proxy {p:?}: the host must be an IP literal (no DNS here)"
                ));
            }
        }
        if self.transfer.queue_answer_timeout_ms == 0 {
            return Err("transfer.queue_answer_timeout_ms must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.adapt.strength) {
            return Err("adapt.strength must be in [0, 1]".into());
        }
        if self.adapt.window < 8 || self.adapt.min_calls > self.adapt.window {
            return Err("adapt.window must be >= 8 and >= adapt.min_calls".into());
        }
        self.policy.validate()
    }

    /// Credentials for challenged in-dialog requests, in the order tried:
    /// `[sip] auth_username`/`auth_password` for any realm, then every
    /// `[[registration]]` account for the realm equal to its registrar's host
    /// (the usual choice of PBXs; Asterisk's `default_realm` must be set to
    /// it). The first that fits the challenge's realm is used.
    pub fn dialog_credentials(&self) -> Vec<DialogCredential> {
        let mut out = Vec::new();
        if let (Some(u), Some(p)) = (&self.sip.auth_username, &self.sip.auth_password) {
            out.push(DialogCredential {
                realm: None,
                username: u.clone(),
                password: p.clone(),
            });
        }
        for r in &self.registrations {
            if let Ok(uri) = r.registrar_uri() {
                out.push(DialogCredential {
                    realm: Some(
                        uri.host
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_string(),
                    ),
                    username: r.username.clone(),
                    password: r.password.clone(),
                });
            }
        }
        out
    }

    /// The address we put in Contact, Via and SDP.
    pub fn advertised_ip(&self) -> IpAddr {
        self.sip.external_address.unwrap_or(self.sip.listen.ip())
    }

    /// RFC 3261 timer T1.
    pub fn t1(&self) -> Duration {
        Duration::from_millis(self.sip.t1_ms)
    }

    /// RFC 3261 timer T2.
    pub fn t2(&self) -> Duration {
        Duration::from_millis(self.sip.t2_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_profile_is_the_loopback_default() {
        let p = Profile::from_toml("", "inline").unwrap();
        assert_eq!(p.sip.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(p.http.listen, Some("127.0.0.1:9060".parse().unwrap()));
        assert_eq!(p.policy.decision_deadline_ms, 3000);
    }

    #[test]
    fn shipped_profiles_are_valid_and_default_listens_on_loopback() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-profiles");
        let p = Profile::load(&dir.join("default.toml")).unwrap();
        assert_eq!(p.sip.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(p.http.listen, Some("127.0.0.1:9060".parse().unwrap()));
        assert_eq!(p.policy.rules.len(), 2);
        assert_eq!(p.sip.transports, [Transport::Udp, Transport::Tcp]);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn the_line_statistics_file_cannot_be_another_file_of_the_profile() {
        let text = "[events]\nfile = \"calls.jsonl\"\n[adapt]\nfile = \"calls.jsonl\"\n";
        let err = Profile::from_toml(text, "p").unwrap_err().to_string();
        assert!(err.contains("also events.file"), "{err}");
        let ok = "[adapt]\nfile = \"line.json\"\nstrength = 1.0\n";
        let p = Profile::from_toml(ok, "p").unwrap();
        assert_eq!(p.adapt_file(), Some(Path::new("./line.json")));
        let err = Profile::from_toml("[adapt]\nstrength = 1.5\n", "p").unwrap_err();
        assert!(err.to_string().contains("adapt.strength"), "{err}");
    }

    #[test]
    fn transports_are_validated() {
        let p = Profile::from_toml("[sip]\ntransports = [\"udp\"]\n", "p").unwrap();
        assert_eq!(p.sip.transports, [Transport::Udp]);
        for (text, needle) in [
            ("transports = []", "at least one transport"),
            ("transports = [\"udp\", \"UDP\"]", "twice"),
            ("transports = [\"tcp\"]", "must include \"udp\""),
            (
                "transports = [\"udp\", \"tls\"]",
                "set sip.tls_listen instead",
            ),
            ("transports = [\"udp\", \"sctpx\"]", "unknown transport"),
            ("tls_listen = \"127.0.0.1:5061\"", "needs sip.tls_cert"),
            ("tls_verify_clients = true", "needs sip.tls_ca"),
        ] {
            let err = Profile::from_toml(&format!("[sip]\n{text}\n"), "p").unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn bad_queue_uri_is_refused() {
        let err =
            Profile::from_toml("[policy]\ndefault_queue = \"standard queue\"\n", "p").unwrap_err();
        assert!(err.to_string().contains("policy.default_queue"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Profile::from_toml("[sip]\nlisten_addr = \"x\"\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn registration_accounts_parse_and_hide_the_password() {
        let p = Profile::from_toml(
            "[[registration]]\nregistrar = \"sip:127.0.0.1:5070\"\naor = \"sip:emonav@pbx\"\n\
             username = \"emonav\"\npassword = \"s3cret\"\n",
            "p",
        )
        .unwrap();
        assert_eq!(p.registrations.len(), 1);
        assert_eq!(p.registrations[0].expires, 3600);
        assert!(!format!("{p:?}").contains("s3cret"));
        let creds = p.dialog_credentials();
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0].realm.as_deref(), Some("127.0.0.1"));
        assert_eq!(creds[0].password.expose(), "s3cret");
    }

    #[test]
    fn sip_auth_credentials_come_first_and_need_both_keys() {
        let p = Profile::from_toml(
            "[sip]\nauth_username = \"u\"\nauth_password = \"p\"\n\
             [[registration]]\nregistrar = \"sip:pbx\"\naor = \"sip:a@pbx\"\n\
             username = \"r\"\npassword = \"q\"\n",
            "p",
        )
        .unwrap();
        let creds = p.dialog_credentials();
        assert_eq!(
            (creds[0].realm.as_deref(), creds[0].username.as_str()),
            (None, "u")
        );
        assert_eq!(creds[1].realm.as_deref(), Some("pbx"));
        let err = Profile::from_toml("[sip]\nauth_username = \"u\"\n", "p").unwrap_err();
        assert!(err.to_string().contains("auth_password"), "{err}");
    }

    #[test]
    fn bad_registration_is_refused_with_its_key() {
        let err = Profile::from_toml(
            "[[registration]]\nregistrar = \"tel:+1\"\naor = \"sip:a@b\"\n\
             username = \"u\"\npassword = \"p\"\n",
            "p",
        )
        .unwrap_err();
        assert!(err.to_string().contains("registration.registrar"), "{err}");
        let err = Profile::from_toml(
            "[[registration]]\nregistrar = \"sip:b\"\naor = \"sip:a@b\"\nusername = \"u\"\n",
            "p",
        )
        .unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
    }

    #[test]
    fn transfer_mode_defaults_to_refer_and_the_proxy_must_be_an_ip_uri() {
        let p = Profile::from_toml("", "p").unwrap();
        assert_eq!(p.transfer.transfer_mode, TransferMode::Refer);
        let p = Profile::from_toml(
            "[transfer]\ntransfer_mode = \"refer_then_b2bua\"\noutbound_proxy = \"sip:127.0.0.1:5070\"\n",
            "p",
        )
        .unwrap();
        assert_eq!(p.transfer.transfer_mode, TransferMode::ReferThenB2bua);
        assert_eq!(p.transfer.outbound_proxy_uri().unwrap().port, Some(5070));
        let err = Profile::from_toml("[transfer]\noutbound_proxy = \"sip:sbc.example\"\n", "p")
            .unwrap_err();
        assert!(err.to_string().contains("IP literal"), "{err}");
        let err = Profile::from_toml("[transfer]\ntransfer_mode = \"bridge\"\n", "p").unwrap_err();
        assert!(err.to_string().contains("bridge"), "{err}");
    }

    #[test]
    fn bridge_media_defaults_to_auto_and_takes_the_three_spellings() {
        let p = Profile::from_toml("", "p").unwrap();
        assert_eq!(p.transfer.media, BridgeMedia::Auto);
        for m in [BridgeMedia::Direct, BridgeMedia::Relay, BridgeMedia::Auto] {
            let text = format!("[transfer]\nmedia = \"{}\"\n", m.name());
            assert_eq!(Profile::from_toml(&text, "p").unwrap().transfer.media, m);
        }
        let err = Profile::from_toml("[transfer]\nmedia = \"proxy\"\n", "p").unwrap_err();
        assert!(err.to_string().contains("proxy"), "{err}");
    }

    #[test]
    fn inverted_port_range_is_refused() {
        let err = Profile::from_toml("[media]\nrtp_port_min = 30000\nrtp_port_max = 20000\n", "p")
            .unwrap_err();
        assert!(err.to_string().contains("rtp_port_min"), "{err}");
    }

    #[test]
    fn every_codec_is_accepted_and_typos_are_refused() {
        let p = Profile::from_toml("[media]\ncodecs = [\"opus\", \"pcmu\"]\n", "p").unwrap();
        assert_eq!(p.media.codecs, [CodecName::Opus, CodecName::Pcmu]);
        let err = Profile::from_toml("[media]\ncodecs = [\"g729\"]\n", "p").unwrap_err();
        assert!(err.to_string().contains("g729"), "{err}");
    }

    #[test]
    fn security_is_off_by_default_and_on_in_the_carrier_and_pbx_profiles() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-profiles");
        let p = Profile::load(&dir.join("default.toml")).unwrap();
        assert!(!p.security.enabled() && !p.media.symmetric_rtp);
        for (f, untrusted) in [
            ("carrier-peering.toml", crate::trust::Untrusted::Drop),
            ("asterisk.toml", crate::trust::Untrusted::Forbidden),
            ("freeswitch.toml", crate::trust::Untrusted::Forbidden),
        ] {
            let p = Profile::load(&dir.join(f)).unwrap();
            assert!(p.security.enabled(), "{f}");
            assert_eq!(p.security.untrusted, untrusted, "{f}");
        }
        for (text, needle) in [
            (
                "trusted_sources = [\"10.0.0.0/40\"]",
                "security.trusted_sources",
            ),
            (
                "trusted_media = [\"sbc.example\"]",
                "security.trusted_media",
            ),
            ("trust_registrars = true", "no [[registration]]"),
            ("untrusted = \"404\"", "404"),
        ] {
            let err = Profile::from_toml(&format!("[security]\n{text}\n"), "p").unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
