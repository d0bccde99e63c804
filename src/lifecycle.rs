//! Drain and reload: what SIGTERM/SIGINT, SIGHUP and `POST /reload` do.
//!
//! - **Drain.** The first shutdown signal stops taking calls: the endpoint
//!   answers new INVITEs and OPTIONS `503 Service Unavailable` with
//!   `Retry-After` (RFC 3261 §21.5.4, §20.33), so a proxy or PBX fails over,
//!   while the calls in progress go on to their decision and transfer. When
//!   the last of them has produced its record (or `[shutdown]
//!   drain_timeout_s` has passed) the registrations are removed and the
//!   server returns. A second signal returns at once.
//! - **Reload.** The profile is read again exactly as at start (so a bad one
//!   is refused with `check-config`'s message, and the running one kept);
//!   its `[policy]` becomes the settings every call started from then on
//!   takes. A call takes one snapshot (`Arc<CallSettings>`) when it starts
//!   and keeps it: a reload never changes a call half-way, and the packet
//!   path never looks at the shared cell. The cell is a std `RwLock`
//!   read once per new call, which needs no extra crate.
//!
//! The readiness `/readyz` reports is kept here as well.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::{mpsc, watch};

use crate::call::CallSettings;
use crate::config::{ConfigError, Profile};

/// What the SIP task is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Stop taking calls, finish those in progress, un-REGISTER, return.
    Drain,
    /// Return now.
    Stop,
}

/// Reads the profile again for a reload.
type Loader = Box<dyn Fn() -> Result<Profile, ConfigError> + Send + Sync>;

/// State shared by the SIP task, the call tasks, the HTTP responder and the
/// [`ServerHandle`]s.
pub(crate) struct Lifecycle {
    /// The settings a new call takes; replaced by a reload.
    settings: RwLock<Arc<CallSettings>>,
    /// The profile in effect (its `[policy]` from the last reload), to say
    /// which sections a reload did not apply.
    running: Mutex<Profile>,
    loader: OnceLock<Loader>,
    control: mpsc::UnboundedSender<Control>,
    draining: AtomicBool,
    /// Calls whose record is not out yet.
    active: watch::Sender<usize>,
    /// Calls whose session is not over yet (admission counts these).
    sessions: AtomicUsize,
    /// The most calls in progress since [`Lifecycle::take_peak`] (src/trim.rs).
    peak: AtomicUsize,
    /// Every `[[registration]]` account is registered (true without any).
    registered: AtomicBool,
    /// `[overload]` refuses new calls (src/overload.rs).
    overloaded: AtomicBool,
}

impl Lifecycle {
    /// For a server about to run `settings` from `profile`; the receiver is
    /// the SIP task's.
    pub(crate) fn new(
        settings: Arc<CallSettings>,
        profile: &Profile,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Control>) {
        let (control, rx) = mpsc::unbounded_channel();
        let life = Lifecycle {
            settings: RwLock::new(settings),
            running: Mutex::new(profile.clone()),
            loader: OnceLock::new(),
            control,
            draining: AtomicBool::new(false),
            active: watch::Sender::new(0),
            sessions: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            registered: AtomicBool::new(profile.registrations.is_empty()),
            overloaded: AtomicBool::new(false),
        };
        (Arc::new(life), rx)
    }

    /// The settings a call starting now runs with.
    pub(crate) fn settings(&self) -> Arc<CallSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Count a call as in progress until its record is out.
    pub(crate) fn call_started(self: &Arc<Self>) -> ActiveCall {
        self.active.send_modify(|n| {
            *n += 1;
            self.peak.fetch_max(*n, Ordering::Relaxed);
        });
        self.sessions.fetch_add(1, Ordering::Relaxed);
        ActiveCall {
            life: Some(self.clone()),
            in_session: true,
        }
    }

    /// Calls whose session is not over: what `[overload] max_calls` limits.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// The most calls in progress since the previous `take_peak`, and the
    /// calls in progress now (the next peak starts from them).
    pub(crate) fn take_peak(&self) -> (usize, usize) {
        let now = *self.active.borrow();
        (self.peak.swap(now, Ordering::Relaxed), now)
    }

    /// Calls in progress, watched by a draining SIP task.
    pub(crate) fn active(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    /// The SIP task publishes whether every account is registered.
    pub(crate) fn set_registered(&self, up: bool) {
        self.registered.store(up, Ordering::Relaxed);
    }

    /// The SIP task publishes whether `[overload]` refuses new calls.
    pub(crate) fn set_overloaded(&self, over: bool) {
        self.overloaded.store(over, Ordering::Relaxed);
    }

    /// Why the server is not ready to take calls, if it is not (`/readyz`).
    /// The sockets are bound before anything can ask.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if !self.registered.load(Ordering::Relaxed) {
            Some("not registered")
        } else if self.overloaded.load(Ordering::Relaxed) {
            Some("overloaded")
        } else {
            None
        }
    }

    /// First shutdown signal: drain; any later one: stop at once. Returns
    /// what was asked.
    pub(crate) fn shutdown_signal(&self) -> Control {
        let c = if self.draining.swap(true, Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Drain
        };
        let _ = self.control.send(c);
        c
    }

    /// Read the profile again and apply its `[policy]` to new calls. `Ok`
    /// says what was applied; `Err` is the profile's error (logged; the
    /// running profile stays).
    pub(crate) fn reload(&self) -> Result<String, String> {
        let result = self.try_reload();
        match &result {
            Ok(summary) => tracing::info!("profile reloaded: {summary}"),
            Err(e) => tracing::error!("reload refused, the running profile is kept: {e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let loader = self
            .loader
            .get()
            .ok_or("this server has no profile to reload from")?;
        let new = loader().map_err(|e| e.to_string())?;
        for w in new.referral_loops() {
            tracing::warn!("{w}");
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut settings = CallSettings::clone(&self.settings());
        settings.policy = new.policy.clone();
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        let not_applied = unapplied_sections(&running, &new);
        running.policy = new.policy.clone();
        let p = &new.policy;
        let mut summary = format!(
            "[policy] applied to new calls: {} rules, {} keypad rules, default queue {}",
            p.rules.len(),
            p.dtmf.len(),
            p.default_queue
        );
        if !not_applied.is_empty() {
            summary.push_str(&format!(
                "; changed but applied only at the next start: {}",
                not_applied.join(", ")
            ));
        }
        Ok(summary)
    }
}

/// The sections other than `[policy]` that differ (by their debug form:
/// passwords, hidden there, are not compared).
fn unapplied_sections(old: &Profile, new: &Profile) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    [
        ("[sip]", differs(&old.sip, &new.sip)),
        ("[media]", differs(&old.media, &new.media)),
        ("[http]", differs(&old.http, &new.http)),
        ("[transfer]", differs(&old.transfer, &new.transfer)),
        ("[events]", differs(&old.events, &new.events)),
        ("[model]", differs(&old.model, &new.model)),
        ("[adapt]", differs(&old.adapt, &new.adapt)),
        ("[shutdown]", differs(&old.shutdown, &new.shutdown)),
        (
            "[[registration]]",
            differs(&old.registrations, &new.registrations),
        ),
    ]
    .into_iter()
    .filter_map(|(name, d)| d.then_some(name))
    .collect()
}

/// A call in progress, until [`ActiveCall::done`] or drop.
pub(crate) struct ActiveCall {
    life: Option<Arc<Lifecycle>>,
    in_session: bool,
}

impl ActiveCall {
    /// The session is over (our BYE sent): the call no longer counts
    /// against `max_calls`, though it holds up a drain until its record is
    /// out (a BYE to a caller that is gone waits for Timer F).
    pub(crate) fn session_over(&mut self) {
        if std::mem::take(&mut self.in_session) {
            if let Some(life) = &self.life {
                life.sessions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The call's record is out: it no longer holds up a drain.
    pub(crate) fn done(&mut self) {
        self.session_over();
        if let Some(life) = self.life.take() {
            life.active.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.done();
    }
}

/// Control of a running [`Server`](crate::Server) from outside (signal
/// handlers): drain, stop, reload.
#[derive(Clone)]
pub struct ServerHandle(pub(crate) Arc<Lifecycle>);

impl ServerHandle {
    /// A shutdown signal (SIGTERM, SIGINT): the first drains (new calls
    /// refused with 503, calls in progress finish, registrations removed),
    /// a second makes the server return at once. True when this one drains.
    pub fn shutdown_signal(&self) -> bool {
        self.0.shutdown_signal() == Control::Drain
    }

    /// Reload the profile (SIGHUP): see [`Server::reload_with`](crate::Server::reload_with).
    /// Blocking (reads files); `Err` is the profile's error, already logged.
    pub fn reload(&self) -> Result<String, String> {
        self.0.reload()
    }

    pub(crate) fn set_loader(&self, loader: Loader) {
        let _ = self.0.loader.set(loader);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(text: &str) -> Arc<Lifecycle> {
        let p = Profile::from_toml(text, "p").unwrap();
        Lifecycle::new(Arc::new(CallSettings::from_profile(&p, 5060)), &p).0
    }

    #[test]
    fn a_reload_changes_new_calls_settings_and_a_bad_profile_changes_nothing() {
        let life = life("");
        let before = life.settings();
        let next = std::sync::Mutex::new(Some(
            "[policy]\ndefault_queue = \"sip:new@127.0.0.1:5070\"\n[sip]\nt1_ms = 200\n",
        ));
        let handle = ServerHandle(life.clone());
        handle.set_loader(Box::new(move || {
            let text = next
                .lock()
                .unwrap()
                .take()
                .unwrap_or("[policy]\nbad_key = 1\n");
            Profile::from_toml(text, "p.toml")
        }));
        let summary = handle.reload().unwrap();
        assert!(
            summary.contains("default queue sip:new@127.0.0.1:5070"),
            "{summary}"
        );
        assert!(summary.contains("next start: [sip]"), "{summary}");
        let after = life.settings();
        assert_eq!(after.policy.default_queue, "sip:new@127.0.0.1:5070");
        // The call that started before keeps its snapshot; the rest is shared.
        assert_eq!(before.policy.default_queue, "sip:default@127.0.0.1:5070");
        assert!(Arc::ptr_eq(&before.lines[0], &after.lines[0]));
        assert_eq!(after.timers.t1, before.timers.t1);
        let err = handle.reload().unwrap_err();
        assert!(
            err.contains("invalid profile p.toml") && err.contains("bad_key"),
            "{err}"
        );
        assert_eq!(
            life.settings().policy.default_queue,
            "sip:new@127.0.0.1:5070"
        );
    }

    #[test]
    fn the_first_signal_drains_the_second_stops_and_readiness_follows() {
        let life = life("[[registration]]\nregistrar = \"sip:127.0.0.1:5070\"\naor = \"sip:a@b\"\nusername = \"u\"\npassword = \"p\"\n");
        assert_eq!(life.not_ready(), Some("not registered"));
        life.set_registered(true);
        assert_eq!(life.not_ready(), None);
        let mut call = life.call_started();
        assert_eq!(*life.active().borrow(), 1);
        assert_eq!(life.shutdown_signal(), Control::Drain);
        assert_eq!(life.not_ready(), Some("draining"));
        call.session_over();
        assert_eq!((life.sessions(), *life.active().borrow()), (0, 1));
        call.done();
        drop(call);
        assert_eq!(*life.active().borrow(), 0, "counted once");
        assert_eq!(life.sessions(), 0, "counted once");
        assert_eq!(life.shutdown_signal(), Control::Stop);
    }
}
