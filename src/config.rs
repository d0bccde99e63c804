//! Deployment profiles (`sip-profiles/*.toml`): what emonav listens on, which
//! codecs it accepts, and how it routes. Every key is documented in
//! `sip-profiles/default.toml`; this module only gives them types and defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use emonav_dsp::Model;
use serde::Deserialize;

use crate::policy::Policy;
use crate::sdp::CodecName;

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
    /// The model `[model] file` names, read when the profile was loaded.
    #[serde(skip)]
    loaded_model: Option<Arc<Model>>,
}

/// `[model]`: which emotion model a call runs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A model file written by `emonav train`, relative to the profile's
    /// folder; `None` = the default model embedded in the binary.
    pub file: Option<String>,
}

/// `[sip]`: signalling.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Address and port to listen on for SIP over UDP.
    pub listen: SocketAddr,
    /// Address advertised in Contact, Via and SDP when it differs from the
    /// listen address (NAT); defaults to the listen address.
    pub external_address: Option<IpAddr>,
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
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5060".parse().expect("static address"),
            external_address: None,
            user: "emonav".into(),
            answer_delay_ms: 0,
            t1_ms: 500,
            t2_ms: 4000,
            user_agent: concat!("emonav/", env!("CARGO_PKG_VERSION")).into(),
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
    /// Codecs we accept, in our order of preference.
    pub codecs: Vec<CodecName>,
    /// End the call when no RTP has arrived for this long after the first
    /// packet, in ms (0 = never).
    pub rtp_timeout_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            rtp_port_min: 20000,
            rtp_port_max: 20999,
            // G.711 first: what a PBX trunk offers; Opus for callers who offer nothing else.
            codecs: vec![CodecName::Pcmu, CodecName::Pcma, CodecName::Opus],
            rtp_timeout_ms: 30_000,
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

/// `[transfer]`: REFER behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// How long to wait, from sending REFER, for a final NOTIFY (ms).
    pub notify_timeout_ms: u64,
    /// What to do when the transfer fails.
    pub fallback: Fallback,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            notify_timeout_ms: 10_000,
            fallback: Fallback::DefaultQueueThenHangup,
        }
    }
}

/// `[events]`: where the per-call JSON event lines go.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// File to append JSON lines to; `None` = standard output.
    pub file: Option<String>,
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
        if let Some(file) = &profile.model.file {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(format!("model.file {}: {e}", path.display())))?;
            let model = Model::from_json(&text)
                .map_err(|e| invalid(format!("model.file {}: {e}", path.display())))?;
            profile.loaded_model = Some(Arc::new(model));
        }
        Ok(profile)
    }

    /// The emotion model calls run: the profile's file, or the embedded default.
    pub fn model(&self) -> Arc<Model> {
        self.loaded_model
            .clone()
            .unwrap_or_else(|| Arc::new(crate::learn::default_model()))
    }

    fn validate(&self) -> Result<(), String> {
        if self.media.rtp_port_min == 0 || self.media.rtp_port_min > self.media.rtp_port_max {
            return Err(format!(
                "media.rtp_port_min ({}) must be > 0 and <= media.rtp_port_max ({})",
                self.media.rtp_port_min, self.media.rtp_port_max
            ));
        }
        if self.media.codecs.is_empty() {
            return Err("media.codecs must name at least one codec".into());
        }
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err("sip.t1_ms must be > 0 and sip.t2_ms >= sip.t1_ms".into());
        }
        self.policy.validate()
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
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
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
}
