//! The `emonav` binary: `run` (default), `analyze`, `train`, `eval` and `check-config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use std::time::Duration;

use emonav::{Decider, Decision, EventSink, Policy, Profile, Server};
use emonav_offline::corpus::{self, Labels};
use emonav_offline::learn::{self, Normalisation};
use emonav_offline::multi;

/// Where a profile is looked for when `--profile` is not given, relative to
/// the working directory (the repository root, or an install's folder).
const DEFAULT_PROFILE: &str = "sip-profiles/default.toml";

/// `sip-profiles/default.toml` as built into the binary, so that emonav runs
/// from any folder (`cargo install`): used when no `--profile` is given and
/// [`DEFAULT_PROFILE`] is not there.
const EMBEDDED_PROFILE: &str = include_str!("../sip-profiles/default.toml");

/// What [`EMBEDDED_PROFILE`] is called in messages.
const EMBEDDED_NAME: &str = "(embedded default profile)";

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
        /// WAV file (any rate, any PCM format; mixed down to mono), or a
        /// packet capture (pcap/pcapng) whose RTP streams are each analysed
        /// as a call would analyse them.
        file: PathBuf,
        /// Profile whose policy decides (default: sip-profiles/default.toml
        /// if present, else the one built into the binary).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write loudness, pitch and P(high arousal) over time, with the
        /// decision instant, to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Train an emotion model on a labelled corpus (features through the in-call pipeline).
    Train(TrainArgs),
    /// Score a model on a labelled corpus, or run leave-one-speaker-out training and scoring.
    Eval(EvalArgs),
    /// Validate a profile and print the settings in effect.
    CheckConfig {
        /// Profile to check (default: sip-profiles/default.toml if present,
        /// else the one built into the binary).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Write the default profile built into the binary (every key,
        /// documented) to standard output, to start a profile from.
        #[arg(long, conflicts_with = "profile")]
        print_default: bool,
    },
    /// A service report from the per-call event lines: calls per hour and
    /// queue, emotion mix, flag rate, decision times, failures, repeat callers.
    Report {
        /// The `[events]` file a running emonav writes (JSON lines; `-` for standard input).
        #[arg(long)]
        events: PathBuf,
        /// Only calls started at or after this: RFC 3339 (`2026-11-28T08:00:00Z`)
        /// or an age (`24h`, `7days`).
        #[arg(long)]
        since: Option<String>,
        /// Only calls started before this (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Write the HTML report (charts inline) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as one JSON object on standard output.
        #[arg(long)]
        json: bool,
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
    /// Analysis rate: 8000 (every call, the line conditions of --condition)
    /// or 16000 (Opus decoded at 16 kHz; clean audio only).
    #[arg(long, default_value_t = 8000, value_parser = parse_rate)]
    rate: u32,
    /// Cache extracted features in this folder (keyed by clip, condition and
    /// feature version), so repeated runs skip the extraction.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Train on the reference condition only (full-band G.711 μ-law at
    /// −20 dBFS) instead of the multi-condition set.
    #[arg(long)]
    clean_only: bool,
    /// Renderings per clip besides the reference in multi-condition
    /// training: a number (picked per clip from the evaluated conditions and
    /// speed-1), or `all` (every training condition, the steep `pcmu-sinc`
    /// band-pass included).
    #[arg(long, default_value = "2", conflicts_with = "clean_only")]
    renderings: String,
    /// Features to read as unknown (the population mean) in training and
    /// scoring, comma-separated: compares a smaller feature layout from the
    /// same cache (model selection only; a trained model keeps every name).
    #[arg(long, value_delimiter = ',')]
    mask_features: Vec<String>,
    /// L2 strengths, comma-separated: one is used as is, several are chosen
    /// from per task by inner leave-one-speaker-out.
    #[arg(long, value_delimiter = ',', default_value = "0.01")]
    lambda: Vec<f64>,
    /// Classifier family of every task: `logistic` (L2 logistic regression),
    /// `mlp` (16 tanh units, the L2 strength as weight decay), `ensemble`
    /// (mean of the two scores) or `bagged` (mean of 4 networks from
    /// different seeds).
    #[arg(long, value_enum, default_value_t = FamilyArg::Logistic)]
    family: FamilyArg,
}

impl CorpusArgs {
    fn renderings(&self) -> anyhow::Result<multi::Renderings> {
        Ok(if self.clean_only {
            multi::Renderings::CleanOnly
        } else if self.renderings == "all" {
            multi::Renderings::All
        } else {
            multi::Renderings::Some(
                self.renderings.parse().with_context(|| {
                    format!("--renderings {:?}: a number or all", self.renderings)
                })?,
            )
        })
    }

    fn rendering_name(&self) -> String {
        match self.renderings() {
            Ok(multi::Renderings::CleanOnly) => "clean only".into(),
            Ok(multi::Renderings::All) => "multi-condition (every training condition)".into(),
            Ok(multi::Renderings::Some(n)) => format!("multi-condition (reference + {n})"),
            Err(_) => "?".into(),
        }
    }
}

/// `--family`: [`emonav_dsp::model::Family`].
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FamilyArg {
    Logistic,
    Mlp,
    Ensemble,
    Bagged,
}

impl FamilyArg {
    fn family(self) -> emonav_dsp::model::Family {
        use emonav_dsp::model::Family;
        match self {
            FamilyArg::Logistic => Family::Logistic,
            FamilyArg::Mlp => Family::Mlp,
            FamilyArg::Ensemble => Family::Ensemble,
            FamilyArg::Bagged => Family::Bagged,
        }
    }
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
    /// The line condition the clips are scored under (see
    /// offline/src/conditions.rs), or `all` for a table over every condition.
    #[arg(long, default_value = "pcmu")]
    condition: String,
    /// With --loso: simulate adaptation to the line (`[adapt]`): the clips
    /// arrive as one shuffled stream, each scored through the statistics of
    /// the clips before it (no labels).
    #[arg(long, requires = "loso")]
    adapt: bool,
    /// `[adapt] min_calls` for --adapt.
    #[arg(long, default_value_t = 200)]
    adapt_min_calls: usize,
    /// `[adapt] strength` for --adapt.
    #[arg(long, default_value_t = 0.5)]
    adapt_strength: f32,
    /// Seed of the --adapt stream's order.
    #[arg(long, default_value_t = 1)]
    adapt_seed: u64,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Deployment profile (TOML; default: sip-profiles/default.toml if
    /// present, else the one built into the binary).
    #[arg(long)]
    profile: Option<PathBuf>,
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
        Some(Command::CheckConfig {
            print_default: true,
            ..
        }) => {
            print!("{EMBEDDED_PROFILE}");
            Ok(())
        }
        Some(Command::CheckConfig { profile, .. }) => check_config(&ProfileSource::pick(profile)),
        Some(Command::Analyze {
            file,
            profile,
            json,
            plot,
        }) => analyze(&file, &ProfileSource::pick(profile), json, plot.as_deref()),
        Some(Command::Train(args)) => train(&args),
        Some(Command::Eval(args)) => eval(&args),
        Some(Command::Report {
            events,
            since,
            until,
            out,
            json,
        }) => report(
            &events,
            since.as_deref(),
            until.as_deref(),
            out.as_deref(),
            json,
        ),
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

/// Where the profile comes from: a file, or the one built into the binary.
#[derive(Debug, Clone)]
enum ProfileSource {
    File(PathBuf),
    Embedded,
}

impl ProfileSource {
    /// `--profile` if given; else `sip-profiles/default.toml` in the working
    /// directory if it is there; else the embedded default. Says which.
    fn pick(given: Option<PathBuf>) -> Self {
        let source = match given {
            Some(p) => return ProfileSource::File(p),
            None if Path::new(DEFAULT_PROFILE).is_file() => {
                ProfileSource::File(DEFAULT_PROFILE.into())
            }
            None => ProfileSource::Embedded,
        };
        tracing::info!(profile = %source, "no --profile given: using {source}");
        source
    }

    fn load(&self) -> Result<Profile, emonav::ConfigError> {
        match self {
            ProfileSource::File(p) => Profile::load(p),
            ProfileSource::Embedded => Profile::from_toml(EMBEDDED_PROFILE, EMBEDDED_NAME),
        }
    }
}

impl std::fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileSource::File(p) => write!(f, "{}", p.display()),
            ProfileSource::Embedded => f.write_str(EMBEDDED_NAME),
        }
    }
}

fn load(source: &ProfileSource) -> anyhow::Result<Profile> {
    Ok(source.load()?)
}

fn check_config(source: &ProfileSource) -> anyhow::Result<()> {
    let p = load(source)?;
    println!("{source}: ok");
    for w in p.referral_loops() {
        println!("  warning: {w}");
    }
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
    println!(
        "  transfer mode         {}, queues via {}",
        p.transfer.transfer_mode.name(),
        p.transfer
            .outbound_proxy
            .as_deref()
            .unwrap_or("the queue URI or the caller's previous hop")
    );
    if p.adapt.enabled {
        println!(
            "  line adaptation       after {} calls, window {}, strength {}, {}",
            p.adapt.min_calls,
            p.adapt.window,
            p.adapt.strength,
            p.adapt_file().map_or("in memory".to_string(), |f| format!(
                "kept in {}",
                f.display()
            ))
        );
    } else {
        println!("  line adaptation       off");
    }
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

fn analyze(
    file: &Path,
    profile: &ProfileSource,
    json: bool,
    plot: Option<&Path>,
) -> anyhow::Result<()> {
    let p = load(profile)?;
    if is_capture(file) {
        anyhow::ensure!(
            plot.is_none(),
            "--plot draws a recording; a capture's streams are reported as text or --json"
        );
        return analyze_capture(file, &p, json);
    }
    let a = emonav_offline::analyze::analyze(file, &mut Routing::new(&p.policy), p.model(8000))?;
    if let Some(out) = plot {
        let title = format!("{} -> {}", file.display(), a.decision.0.queue);
        let svg = emonav_offline::timeline::svg(&title, &a.trace, a.decision_ms)
            .map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
        std::fs::write(out, svg).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string(&a)?);
    } else {
        print!("{a}");
    }
    Ok(())
}

/// The profile's routing policy as the decision rule `analyze` judges a recording by.
/// The call's decision clock on a recording's timeline: the first audio at
/// `start`, time advancing with the audio.
struct Routing {
    decider: Decider,
    start: std::time::Instant,
}

impl Routing {
    fn new(policy: &Policy) -> Self {
        let start = std::time::Instant::now();
        let mut decider = Decider::new(policy.clone());
        decider.answered(start);
        decider.heard(start);
        Self { decider, start }
    }
}

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

impl emonav_offline::analyze::Decide for Routing {
    type Decision = Routed;
    fn after_packet(&mut self, e: &emonav_dsp::Estimate, ms: u64) -> Option<(Routed, u64)> {
        let now = self.start + Duration::from_millis(ms);
        let early = self.decider.after_packet(e).is_some();
        let due = self.decider.deadline().filter(|&d| now >= d);
        if !early {
            due?;
            self.decider.at_deadline(e);
        }
        let at = due.map_or(ms, |d| (d - self.start).as_millis() as u64);
        self.decider.decision().map(|d| (Routed(d.clone()), at))
    }
    fn at_end(&mut self, e: &emonav_dsp::Estimate) -> (Routed, u64) {
        let at = self
            .decider
            .deadline()
            .map_or(0, |d| (d - self.start).as_millis() as u64);
        self.decider.at_deadline(e);
        let d = self.decider.decision().expect("decided at the deadline");
        (Routed(d.clone()), at)
    }
}

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let d = &args.data;
    let (out, rate) = (&args.out, d.rate);
    let items = corpus::load(&d.corpus, &d.labels)?;
    let (g, speakers) = learn::groups(&items);
    let all: Vec<usize> = (0..items.len()).collect();
    let samples = if rate == 16000 {
        let feats = learn::extract_all(&items, rate)?;
        learn::samples(&items, &feats, &g, &all)
    } else {
        let r = d.renderings()?;
        let picks = |i: usize| multi::renderings_of(i, r);
        let conds = multi::training_conditions();
        let mut table = multi::extract(
            &items,
            &g,
            &conds,
            &|c, i| picks(i).contains(&c),
            d.cache.as_deref(),
        )?;
        multi::mask(&mut table, &d.mask_features).map_err(anyhow::Error::msg)?;
        multi::samples(&items, &table, &g, &all, &picks, None)
    };
    let description = format!(
        "trained on {} clips from {} ({} speakers), {}, {:?}, L2 {:?}, by emonav {}",
        items.len(),
        d.corpus.display(),
        speakers.len(),
        if rate == 16000 {
            "16 kHz clean audio".to_string()
        } else {
            match d.renderings()? {
                multi::Renderings::CleanOnly => "8 kHz full-band G.711 mu-law only".to_string(),
                multi::Renderings::All => {
                    "8 kHz multi-condition (every clip under every training line condition)"
                        .to_string()
                }
                multi::Renderings::Some(n) => format!(
                    "8 kHz multi-condition (the reference and {n} more line conditions per clip)"
                ),
            }
        },
        d.family,
        d.lambda,
        env!("CARGO_PKG_VERSION")
    );
    let model = emonav_dsp::model::train_family(
        &samples,
        rate,
        &description,
        &learn::category_labels(),
        &d.lambda,
        d.family.family(),
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

fn load_model(args: &EvalArgs, rate: u32) -> anyhow::Result<emonav_dsp::Model> {
    let m = match &args.model {
        Some(p) => emonav_dsp::Model::from_json(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
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
    Ok(m)
}

/// `eval` at 8 kHz under line conditions.
fn eval_conditions(args: &EvalArgs) -> anyhow::Result<()> {
    let d = &args.data;
    let items = corpus::load(&d.corpus, &d.labels)?;
    let (g, speakers) = learn::groups(&items);
    let conds = multi::training_conditions();
    let mut eval: Vec<usize> = Vec::new();
    for name in args.condition.split(',') {
        if name == "all" {
            eval.extend(0..emonav_offline::conditions::ALL.len());
            continue;
        }
        match conds.iter().position(|c| c.name == name) {
            Some(k) => eval.push(k),
            None => anyhow::bail!(
                "unknown condition {name:?}: one of all, {}",
                conds.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    let r = d.renderings()?;
    let picks = |i: usize| multi::renderings_of(i, r);
    let mut table = multi::extract(
        &items,
        &g,
        &conds,
        &|c, i| eval.contains(&c) || (args.loso && picks(i).contains(&c)),
        d.cache.as_deref(),
    )?;
    multi::mask(&mut table, &d.mask_features).map_err(anyhow::Error::msg)?;
    let recipe = multi::Recipe {
        lambdas: &d.lambda,
        family: d.family.family(),
    };
    let (mode, preds) = if args.loso && args.adapt {
        let sim = multi::AdaptSim {
            min_calls: args.adapt_min_calls,
            window: 2000,
            strength: args.adapt_strength,
            seed: args.adapt_seed,
        };
        (
            "loso, adapted to the line",
            multi::loso_adapted(&items, &table, &g, &picks, &eval, recipe, sim)?,
        )
    } else if args.loso {
        (
            "loso",
            multi::loso(&items, &table, &g, &picks, &eval, recipe)?,
        )
    } else {
        let m = load_model(args, 8000)?;
        (
            "model",
            eval.iter()
                .map(|&c| {
                    table[c]
                        .iter()
                        .map(|f| {
                            f.as_ref()
                                .map_or_else(Default::default, |f| learn::predict(&m, f))
                        })
                        .collect()
                })
                .collect(),
        )
    };
    let reports: Vec<(&str, learn::EvalReport)> = eval
        .iter()
        .zip(&preds)
        .map(|(&c, p)| {
            (
                conds[c].name,
                learn::report(
                    mode,
                    Normalisation::Population,
                    8000,
                    &items,
                    speakers.len(),
                    p,
                ),
            )
        })
        .collect();
    if let Some(p) = &args.plot {
        emonav_offline::plot::uar_by_speech(&reports[0].1, p)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if reports.len() == 1 {
        let (name, r) = &reports[0];
        if args.json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!("condition {name}, training {}", training_name(args));
            print!("{r}");
        }
        return Ok(());
    }
    if args.json {
        let v: Vec<serde_json::Value> = reports
            .iter()
            .map(|(n, r)| serde_json::json!({"condition": n, "report": r}))
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!(
        "{mode} evaluation, {} clips, {} speakers, training {}",
        items.len(),
        speakers.len(),
        training_name(args)
    );
    println!(
        "\n{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12}",
        "condition",
        "arousal",
        "at 1 s",
        "anger",
        "at 1 s",
        "7-class",
        "at 1 s",
        "worst spk",
        "anger flg",
        "held-out flg"
    );
    for (name, r) in &reports {
        let cat = r.categories.as_ref();
        let worst = r
            .per_speaker
            .iter()
            .map(|s| s.arousal)
            .fold(f64::INFINITY, f64::min);
        println!(
            "{:<12} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>8} {:>9.3} {:>9} {:>12}",
            name,
            r.arousal.uar,
            r.arousal.uar_by_speech_s["1"],
            r.anger.uar,
            r.anger.uar_by_speech_s["1"],
            cat.map_or("-".into(), |c| format!("{:.3}", c.uar)),
            cat.map_or("-".into(), |c| format!("{:.3}", c.uar_by_speech_s["1"])),
            worst,
            format!(
                "{:.2}/{:.2}",
                r.anger_flag.precision_equal_priors, r.anger_flag.recall
            ),
            r.anger_flag_held_out
                .as_ref()
                .map_or("-".into(), |h| format!(
                    "{:.2}/{:.2}",
                    h.precision_equal_priors, h.recall
                )),
        );
    }
    println!("\n(worst spk: the lowest per-speaker arousal UAR; anger flg: precision (equal priors) / recall of the anger flag at {}; held-out flg: the same with the threshold chosen per held-out speaker from the others' scores, highest with recall >= {})", learn::ANGER_FLAG, learn::FLAG_RECALL_GOAL);
    Ok(())
}

fn training_name(args: &EvalArgs) -> String {
    if !args.loso {
        return "none (a given model)".into();
    }
    let adapt = if args.adapt {
        format!(
            "; adapted to the line after {} calls, strength {}, stream seed {}",
            args.adapt_min_calls, args.adapt_strength, args.adapt_seed
        )
    } else {
        String::new()
    };
    let masked = if args.data.mask_features.is_empty() {
        String::new()
    } else {
        format!("; masked {}", args.data.mask_features.join(","))
    };
    format!(
        "{}, {:?}, L2 {:?}{adapt}{masked}",
        args.data.rendering_name(),
        args.data.family,
        args.data.lambda
    )
}

fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let CorpusArgs {
        corpus: dir,
        labels,
        rate,
        ..
    } = &args.data;
    let rate = *rate;
    if args.adapt && (rate != 8000 || args.speaker_norm) {
        anyhow::bail!("--adapt runs at 8000 Hz without --speaker-norm");
    }
    if rate == 8000 && !args.speaker_norm {
        if args.loso && learn::groups(&corpus::load(dir, labels)?).1.len() < 2 {
            anyhow::bail!("--loso needs a speaker for every clip and at least two speakers (CSV: path,label,speaker)");
        }
        return eval_conditions(args);
    }
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
        let m = load_model(args, rate)?;
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

/// The command line's overrides of a profile, applied at start and to every reload.
fn overridden(mut profile: Profile, args: &RunArgs) -> anyhow::Result<Profile> {
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
    Ok(profile)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let source = ProfileSource::pick(args.profile.clone());
    let profile = overridden(load(&source)?, &args)?;
    for w in profile.referral_loops() {
        tracing::warn!("{w}");
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
        let reload_source = source.clone();
        let server = Server::bind(&profile, events)
            .await
            .with_context(|| format!("cannot bind SIP on {}", profile.sip.listen))?
            // The overrides were checked at start: a reload only re-reads the file.
            .reload_with(move || {
                let p = reload_source.load()?;
                Ok(overridden(p.clone(), &args).unwrap_or(p))
            });
        let sip = server.sip_addr()?;
        tracing::info!(
            sip = %format!("udp:{sip}"),
            sip_tcp = %server.sip_tcp_addr().map_or("off".into(), |a| format!("tcp:{a}")),
            http = %server.http_addr().map_or("off".into(), |a| a.to_string()),
            profile = %source,
            "emonav listening"
        );
        let handle = server.handle();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                tracing::error!("cannot install the signal handlers");
                return;
            };
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the profile");
                        let h = handle.clone();
                        // Reading the profile (and its model files) blocks.
                        let _ = tokio::task::spawn_blocking(move || h.reload()).await;
                        continue;
                    }
                };
                tracing::info!("{name} received");
                handle.shutdown_signal();
            }
        });
        server.run().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// A `--since`/`--until` value as unix ms: RFC 3339, or an age before now.
fn parse_instant(s: &str) -> anyhow::Result<u64> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).with_context(|| {
                format!("{s:?}: neither RFC 3339 (2026-11-28T08:00:00Z) nor an age (24h)")
            })?;
            std::time::SystemTime::now() - age
        }
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

fn report(
    events: &Path,
    since: Option<&str>,
    until: Option<&str>,
    out: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    use emonav_offline::report;
    anyhow::ensure!(
        out.is_some() || json,
        "say where the report goes: --out report.html and/or --json"
    );
    let text = if events == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(events)
            .with_context(|| format!("cannot read {}", events.display()))?
    };
    let window = report::Window {
        since_ms: since.map(parse_instant).transpose()?,
        until_ms: until.map(parse_instant).transpose()?,
    };
    let r = report::build(&text, window);
    if r.calls == 0 {
        eprintln!(
            "emonav: no call records in {} ({} lines skipped, {} outside the window)",
            events.display(),
            r.skipped_lines,
            r.outside_window
        );
    }
    if let Some(out) = out {
        std::fs::write(out, report::html(&r))
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("report of {} calls written to {}", r.calls, out.display());
    }
    if json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// A pcap or pcapng file, by its magic number.
fn is_capture(file: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && matches!(
            u32::from_le_bytes(magic),
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 | 0x0a0d_0d0a
        )
}

/// Each RTP stream of a capture through a call's media path and policy.
fn analyze_capture(file: &Path, p: &Profile, json: bool) -> anyhow::Result<()> {
    use emonav_offline::capture::{self, StreamCodec};
    let streams = capture::rtp_streams(file)?;
    anyhow::ensure!(!streams.is_empty(), "no RTP in {}", file.display());
    let settings = emonav::CallSettings::from_profile(p, p.sip.listen.port());
    let mut out = Vec::new();
    for s in &streams {
        let codec = s.codec.map(|c| match c {
            StreamCodec::Pcmu => emonav::CodecName::Pcmu,
            StreamCodec::Pcma => emonav::CodecName::Pcma,
            StreamCodec::Opus => emonav::CodecName::Opus,
        });
        let head = serde_json::json!({
            "source": s.source.to_string(),
            "destination": s.destination.to_string(),
            "ssrc": format!("{:08x}", s.ssrc),
            "pt": s.pt,
            "packets": s.packets.len(),
        });
        let Some(codec) = codec else {
            if !json {
                println!(
                    "{} -> {} ssrc {:08x}: payload type {} not decoded (not PCMU, PCMA or Opus)",
                    s.source, s.destination, s.ssrc, s.pt
                );
            }
            out.push(serde_json::json!({ "stream": head, "error": "payload type not decoded" }));
            continue;
        };
        let r = emonav::replay(&settings, codec, s.pt, &s.packets)?;
        if json {
            out.push(serde_json::json!({
                "stream": head,
                "codec": format!("{codec:?}").to_lowercase(),
                "decision": r.decision,
                "decision_ms": r.decision_ms,
                "audio_ms": r.audio_ms,
                "lost": r.lost,
                "ignored": r.ignored,
            }));
        } else {
            println!(
                "{} -> {} ssrc {:08x} {:?}, {} packets ({} lost, {} ignored), {} ms of audio",
                s.source,
                s.destination,
                s.ssrc,
                codec,
                s.packets.len(),
                r.lost,
                r.ignored,
                r.audio_ms
            );
            println!("  decision at {} ms {}", r.decision_ms, Routed(r.decision));
        }
    }
    if json {
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}
