//! The `emonav` binary: `run` (default), `analyze` and `check-config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use emonav::config::Profile;
use emonav::events::EventSink;
use emonav::server::Server;

const DEFAULT_PROFILE: &str = "sip-profiles/default.toml";

#[derive(Parser)]
#[command(name = "emonav", version, about = "Emotion-aware SIP call router")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Answer calls, analyse the caller's voice, transfer with REFER (the default).
    Run(RunArgs),
    /// Run a recording through the in-call pipeline and print what a call would decide.
    Analyze {
        /// WAV file (any rate, any PCM format; mixed down to mono).
        file: PathBuf,
        /// Profile whose policy decides.
        #[arg(long, default_value = DEFAULT_PROFILE)]
        profile: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a profile and print the settings in effect.
    CheckConfig {
        /// Profile to check.
        #[arg(long, default_value = DEFAULT_PROFILE)]
        profile: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Deployment profile (TOML).
    #[arg(long, default_value = DEFAULT_PROFILE)]
    profile: PathBuf,
    /// Override `[sip] listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override `[http] listen` (`off` disables it).
    #[arg(long)]
    http_listen: Option<String>,
    /// Override `[events] file` (`-` for standard output).
    #[arg(long)]
    events: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
        Some(Command::CheckConfig { profile }) => check_config(&profile),
        Some(Command::Analyze {
            file,
            profile,
            json,
        }) => analyze(&file, &profile, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emonav: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Profile> {
    Ok(Profile::load(path)?)
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let p = load(path)?;
    println!("{}: ok", path.display());
    println!("  sip.listen            udp:{}", p.sip.listen);
    println!("  advertised address    {}", p.advertised_ip());
    println!(
        "  http.listen           {}",
        p.http.listen.map_or("off".into(), |a| a.to_string())
    );
    println!(
        "  rtp ports             {}-{}",
        p.media.rtp_port_min, p.media.rtp_port_max
    );
    println!("  codecs                {:?}", p.media.codecs);
    println!(
        "  decision              after {} ms of speech at confidence >= {}, at the latest {} ms after first audio",
        p.policy.min_speech_ms, p.policy.confidence_threshold, p.policy.decision_deadline_ms
    );
    for r in &p.policy.rules {
        println!(
            "  rule {:<16} arousal in [{}, {}) -> {}",
            r.label,
            r.arousal_min.map_or("0".into(), |v| v.to_string()),
            r.arousal_max.map_or("1".into(), |v| v.to_string()),
            r.queue
        );
    }
    for r in &p.policy.dtmf {
        println!("  key {:<17} digit {} -> {}", r.label, r.digit, r.queue);
    }
    println!("  default queue         {}", p.policy.default_queue);
    Ok(())
}

fn analyze(file: &Path, profile: &Path, json: bool) -> anyhow::Result<()> {
    let p = load(profile)?;
    let a = emonav::analyze::analyze(file, &p.policy)?;
    if json {
        println!("{}", serde_json::to_string(&a)?);
    } else {
        print!("{a}");
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut profile = load(&args.profile)?;
    if let Some(l) = args.listen {
        profile.sip.listen = l;
    }
    match args.http_listen.as_deref() {
        Some("off") => profile.http.listen = None,
        Some(a) => profile.http.listen = Some(a.parse().context("--http-listen")?),
        None => {}
    }
    match args.events.as_deref() {
        Some("-") => profile.events.file = None,
        Some(f) => profile.events.file = Some(f.to_string()),
        None => {}
    }
    let events = match &profile.events.file {
        Some(f) => EventSink::file(f).with_context(|| format!("cannot open events file {f}"))?,
        None => EventSink::stdout(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let server = Server::bind(&profile, events)
            .await
            .with_context(|| format!("cannot bind udp:{}", profile.sip.listen))?;
        let sip = server.sip_addr()?;
        tracing::info!(
            sip = %format!("udp:{sip}"),
            http = %server.http_addr().map_or("off".into(), |a| a.to_string()),
            profile = %args.profile.display(),
            "emonav listening"
        );
        server
            .run(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
            })
            .await;
        Ok(())
    })
}
