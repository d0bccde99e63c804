//! The `emonav` binary: `run` (default), `analyze`, `train`, `eval` and `check-config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use emonav::{Decision, EventSink, Policy, Profile, Server};
use emonav_offline::corpus::{self, Labels};
use emonav_offline::learn::{self, Normalisation};

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
    /// Train an emotion model on a labelled corpus (features through the in-call pipeline).
    Train(TrainArgs),
    /// Score a model on a labelled corpus, or run leave-one-speaker-out training and scoring.
    Eval(EvalArgs),
    /// Validate a profile and print the settings in effect.
    CheckConfig {
        /// Profile to check.
        #[arg(long, default_value = DEFAULT_PROFILE)]
        profile: PathBuf,
    },
}

/// The corpus `train` and `eval` read, and the conditions they read it under.
#[derive(Args)]
struct CorpusArgs {
    /// Corpus folder (EmoDB: the folder holding `wav/`; CSV paths are relative to it).
    #[arg(long)]
    corpus: PathBuf,
    /// `emodb` (labels in the file names) or a CSV of `path,label[,speaker]`.
    #[arg(long, default_value = "emodb")]
    labels: Labels,
    /// Analysis rate: 8000 (G.711 calls: 8 kHz μ-law) or 16000 (Opus calls: 16 kHz wideband).
    #[arg(long, default_value_t = 8000, value_parser = parse_rate)]
    rate: u32,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: CorpusArgs,
    /// Where to write the model (JSON).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    data: CorpusArgs,
    /// Model to score (the embedded default when neither this nor --loso is given).
    #[arg(long, conflicts_with = "loso")]
    model: Option<PathBuf>,
    /// Leave-one-speaker-out: train on all speakers but one, score that one, for each.
    #[arg(long)]
    loso: bool,
    /// z-score each speaker's features over all their clips first (the
    /// corpus's per-speaker reference; not possible in a live call).
    #[arg(long)]
    speaker_norm: bool,
    /// Write a PNG plot of UAR against seconds of speech heard.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
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
        Some(Command::Train(args)) => train(&args),
        Some(Command::Eval(args)) => eval(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emonav: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_rate(s: &str) -> Result<u32, String> {
    match s {
        "8000" => Ok(8000),
        "16000" => Ok(16000),
        _ => Err("8000 (G.711) or 16000 (Opus)".into()),
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
    if p.registrations.is_empty() {
        println!("  registration          none");
    }
    for r in &p.registrations {
        println!(
            "  registration          {} at {} as {} (password set), expires {} s, contact user {}",
            r.aor,
            r.registrar,
            r.username,
            r.expires,
            r.contact_user.as_deref().unwrap_or(&p.sip.user)
        );
    }
    for c in p.dialog_credentials() {
        println!(
            "  in-dialog auth        {} for realm {}",
            c.username,
            c.realm.as_deref().unwrap_or("(any)")
        );
    }
    Ok(())
}

fn analyze(file: &Path, profile: &Path, json: bool) -> anyhow::Result<()> {
    let p = load(profile)?;
    let a = emonav_offline::analyze::analyze(file, &Routing(&p.policy), p.model(8000))?;
    if json {
        println!("{}", serde_json::to_string(&a)?);
    } else {
        print!("{a}");
    }
    Ok(())
}

/// The profile's routing policy as the decision rule `analyze` judges a recording by.
struct Routing<'a>(&'a Policy);

/// A routing decision, printed as `analyze` reports it.
#[derive(serde::Serialize)]
#[serde(transparent)]
struct Routed(Decision);

impl std::fmt::Display for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.0;
        write!(
            f,
            "({:?}): {} -> {}   arousal {:.2}, confidence {:.2}{}",
            d.reason,
            d.label,
            d.queue,
            d.arousal,
            d.confidence,
            if d.flagged { ", flagged high-risk" } else { "" }
        )
    }
}

impl emonav_offline::analyze::Decide for Routing<'_> {
    type Decision = Routed;
    fn deadline_ms(&self) -> u64 {
        self.0.decision_deadline_ms
    }
    fn early(&self, e: &emonav_dsp::Estimate) -> Option<Routed> {
        self.0.early(e).map(Routed)
    }
    fn at_deadline(&self, e: &emonav_dsp::Estimate) -> Routed {
        Routed(self.0.at_deadline(e))
    }
}

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let CorpusArgs {
        corpus: dir,
        labels,
        rate,
    } = &args.data;
    let (out, rate) = (&args.out, *rate);
    let items = corpus::load(dir, labels)?;
    let (g, speakers) = learn::groups(&items);
    let feats = learn::extract_all(&items, rate)?;
    let all: Vec<usize> = (0..items.len()).collect();
    let description = format!(
        "trained on {} clips from {} ({} speakers), {}, by emonav {}",
        items.len(),
        dir.display(),
        speakers.len(),
        if rate == 16000 {
            "16 kHz wideband (Opus call) conditions"
        } else {
            "8 kHz mu-law telephone conditions"
        },
        env!("CARGO_PKG_VERSION")
    );
    let model = emonav_dsp::model::train(
        &learn::samples(&items, &feats, &g, &all),
        rate,
        &description,
        &learn::category_labels(),
    )?;
    std::fs::write(out, model.to_json() + "\n")
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {} (arousal lambda {}, anger lambda {})",
        out.display(),
        model.arousal.lambda,
        model.anger.lambda
    );
    Ok(())
}

fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let CorpusArgs {
        corpus: dir,
        labels,
        rate,
    } = &args.data;
    let rate = *rate;
    let items = corpus::load(dir, labels)?;
    let (g, speakers) = learn::groups(&items);
    if args.loso && speakers.len() < 2 {
        anyhow::bail!("--loso needs a speaker for every clip and at least two speakers (CSV: path,label,speaker)");
    }
    let mut feats = learn::extract_all(&items, rate)?;
    let norm = if args.speaker_norm {
        learn::speaker_normalise(&mut feats, &g);
        Normalisation::Speaker
    } else {
        Normalisation::Population
    };
    let (mode, preds) = if args.loso {
        ("loso", learn::loso(&items, &feats, &g, rate)?)
    } else {
        let m = match &args.model {
            Some(p) => emonav_dsp::Model::from_json(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{}", p.display()))?,
            None => learn::default_model(rate),
        };
        if m.sample_rate != rate {
            anyhow::bail!(
                "the model was trained at {} Hz; evaluate it with --rate {}",
                m.sample_rate,
                m.sample_rate
            );
        }
        (
            "model",
            feats.iter().map(|f| learn::predict(&m, f)).collect(),
        )
    };
    let report = learn::report(mode, norm, rate, &items, speakers.len(), &preds);
    if let Some(p) = &args.plot {
        emonav_offline::plot::uar_by_speech(&report, p)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
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
            .with_context(|| format!("cannot bind SIP on {}", profile.sip.listen))?;
        let sip = server.sip_addr()?;
        tracing::info!(
            sip = %format!("udp:{sip}"),
            sip_tcp = %server.sip_tcp_addr().map_or("off".into(), |a| format!("tcp:{a}")),
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
