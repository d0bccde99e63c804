//! Labelled speech corpora for `emonav train` and `emonav eval`: EmoDB by its
//! file names, or any corpus described by a CSV (`path,label[,speaker]`), and
//! feature extraction through exactly the in-call pipeline (telephone
//! conditions, the call's analyser fed in 20 ms packets).

use std::path::{Path, PathBuf};

use emonav_dsp::model::{feature_vector, FEATURES};
use emonav_dsp::Analyzer;

use crate::analyze::{read_line_audio, AnalyzeError};

/// The eight labels a corpus may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Emotion {
    /// Anger (EmoDB W).
    Anger,
    /// Happiness (EmoDB F).
    Happiness,
    /// Fear (EmoDB A).
    Fear,
    /// Surprise (not in EmoDB).
    Surprise,
    /// Boredom (EmoDB L).
    Boredom,
    /// Sadness (EmoDB T).
    Sadness,
    /// Neutral (EmoDB N).
    Neutral,
    /// Disgust (EmoDB E).
    Disgust,
}

impl Emotion {
    /// All labels, in the CSV's order.
    pub const ALL: [Emotion; 8] = [
        Emotion::Anger,
        Emotion::Happiness,
        Emotion::Fear,
        Emotion::Surprise,
        Emotion::Boredom,
        Emotion::Sadness,
        Emotion::Neutral,
        Emotion::Disgust,
    ];

    /// The label as written in a CSV.
    pub fn name(self) -> &'static str {
        match self {
            Emotion::Anger => "anger",
            Emotion::Happiness => "happiness",
            Emotion::Fear => "fear",
            Emotion::Surprise => "surprise",
            Emotion::Boredom => "boredom",
            Emotion::Sadness => "sadness",
            Emotion::Neutral => "neutral",
            Emotion::Disgust => "disgust",
        }
    }

    /// High arousal (anger, happiness, fear, surprise) or low (boredom,
    /// sadness, neutral); disgust is left out of the arousal task, as is
    /// usual with EmoDB (its arousal is rated medium and varies by actor).
    pub fn high_arousal(self) -> Option<bool> {
        match self {
            Emotion::Anger | Emotion::Happiness | Emotion::Fear | Emotion::Surprise => Some(true),
            Emotion::Boredom | Emotion::Sadness | Emotion::Neutral => Some(false),
            Emotion::Disgust => None,
        }
    }

    fn from_name(s: &str) -> Option<Emotion> {
        Emotion::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s.trim()))
    }

    /// EmoDB's German initial in the file name.
    fn from_emodb(code: char) -> Option<Emotion> {
        Some(match code {
            'W' => Emotion::Anger,
            'F' => Emotion::Happiness,
            'A' => Emotion::Fear,
            'L' => Emotion::Boredom,
            'T' => Emotion::Sadness,
            'N' => Emotion::Neutral,
            'E' => Emotion::Disgust,
            _ => return None,
        })
    }
}

/// How a corpus is labelled.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// EmoDB: labels and speakers in the file names (`SSTTTEV.wav`).
    EmoDb,
    /// A CSV of `path,label[,speaker]`, paths relative to the corpus folder.
    Csv(PathBuf),
}

impl std::str::FromStr for Labels {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s.eq_ignore_ascii_case("emodb") {
            Labels::EmoDb
        } else {
            Labels::Csv(PathBuf::from(s))
        })
    }
}

/// One labelled recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Full path of the audio file.
    pub path: PathBuf,
    /// Its label.
    pub emotion: Emotion,
    /// Its speaker, when known.
    pub speaker: Option<String>,
}

/// Why a corpus cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The folder or CSV cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A CSV line or file name that does not follow the form.
    #[error("{at}: {why}")]
    Label {
        /// File and line, or file name.
        at: String,
        /// What is wrong.
        why: String,
    },
    /// Nothing usable found.
    #[error("no labelled recordings in {0}")]
    Empty(String),
    /// An audio file that cannot be read or converted.
    #[error(transparent)]
    Audio(#[from] AnalyzeError),
}

/// List a corpus: every `*.wav` under `dir/wav` (or `dir`) for EmoDB, or the
/// CSV's rows. Sorted by path, so runs are reproducible.
pub fn load(dir: &Path, labels: &Labels) -> Result<Vec<Item>, CorpusError> {
    let mut items = match labels {
        Labels::EmoDb => load_emodb(dir)?,
        Labels::Csv(csv) => load_csv(dir, csv)?,
    };
    if items.is_empty() {
        return Err(CorpusError::Empty(dir.display().to_string()));
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(items)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CorpusError + '_ {
    move |source| CorpusError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn load_emodb(dir: &Path) -> Result<Vec<Item>, CorpusError> {
    let wav = dir.join("wav");
    let folder = if wav.is_dir() { wav } else { dir.to_path_buf() };
    let mut items = Vec::new();
    for entry in std::fs::read_dir(&folder).map_err(io(&folder))? {
        let path = entry.map_err(io(&folder))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.to_ascii_lowercase().ends_with(".wav") {
            continue;
        }
        let bad = |why: &str| CorpusError::Label {
            at: name.to_string(),
            why: format!("{why} (EmoDB names are SSTTTEV.wav)"),
        };
        let chars: Vec<char> = name.chars().collect();
        if chars.len() < 7 || !chars[..2].iter().all(char::is_ascii_digit) {
            return Err(bad("no speaker number"));
        }
        let emotion = Emotion::from_emodb(chars[5]).ok_or_else(|| bad("unknown emotion code"))?;
        items.push(Item {
            speaker: Some(chars[..2].iter().collect()),
            path,
            emotion,
        });
    }
    Ok(items)
}

fn load_csv(dir: &Path, csv: &Path) -> Result<Vec<Item>, CorpusError> {
    let text = std::fs::read_to_string(csv).map_err(io(csv))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if n == 0 && fields[0].eq_ignore_ascii_case("path") {
            continue;
        }
        let at = format!("{}:{}", csv.display(), n + 1);
        if fields.len() < 2 || fields.len() > 3 || fields[0].is_empty() {
            return Err(CorpusError::Label {
                at,
                why: "expected path,label[,speaker]".into(),
            });
        }
        let emotion = Emotion::from_name(fields[1]).ok_or_else(|| CorpusError::Label {
            at: at.clone(),
            why: format!(
                "unknown label {:?} (one of {})",
                fields[1],
                Emotion::ALL.map(Emotion::name).join(", ")
            ),
        })?;
        items.push(Item {
            path: dir.join(fields[0]),
            emotion,
            speaker: fields
                .get(2)
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string()),
        });
    }
    Ok(items)
}

/// Seconds of speech at which a clip's features are taken, besides the whole clip.
pub const SNAPSHOTS_MS: [u32; 4] = [500, 1000, 2000, 3000];

/// One recording's features under telephone conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// After `SNAPSHOTS_MS[i]` of speech (the whole clip when it has less).
    pub at: [[f32; FEATURES]; SNAPSHOTS_MS.len()],
    /// Over the whole clip.
    pub whole: [f32; FEATURES],
    /// Speech in the whole clip, ms.
    pub speech_ms: u32,
}

/// Extract a recording's features through the in-call pipeline at
/// `analysis_rate`: 8000 is a full-band G.711 line (8 kHz μ-law), 16000
/// an Opus call (16 kHz wideband); 20 ms packets into the call's analyser.
pub fn extract(path: &Path, analysis_rate: u32) -> Result<Features, CorpusError> {
    let (pcm, _) = read_line_audio(path, analysis_rate)?;
    Ok(extract_pcm(&pcm, analysis_rate))
}

/// Features of line audio (PCM at `analysis_rate`) fed to the call's
/// analyser in 20 ms packets: at each snapshot and over the whole clip.
pub fn extract_pcm(pcm: &[i16], analysis_rate: u32) -> Features {
    let mut a = Analyzer::new(analysis_rate);
    let mut at = [[f32::NAN; FEATURES]; SNAPSHOTS_MS.len()];
    let mut next = 0;
    for packet in pcm.chunks(analysis_rate as usize / 50) {
        a.push(packet);
        while next < SNAPSHOTS_MS.len() && a.functionals().speech_ms() >= SNAPSHOTS_MS[next] {
            feature_vector(a.functionals(), &mut at[next]);
            next += 1;
        }
    }
    let mut whole = [0.0; FEATURES];
    feature_vector(a.functionals(), &mut whole);
    for v in at.iter_mut().skip(next) {
        *v = whole;
    }
    Features {
        at,
        whole,
        speech_ms: a.functionals().speech_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emodb_names_and_csv_rows() {
        let dir = std::env::temp_dir().join(format!("emonav-corpus-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("wav")).unwrap();
        for n in ["03a01Wa.wav", "16b10Tb.wav", "readme.txt"] {
            std::fs::write(dir.join("wav").join(n), b"").unwrap();
        }
        let items = load(&dir, &Labels::EmoDb).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].emotion, items[0].speaker.as_deref()),
            (Emotion::Anger, Some("03"))
        );
        assert_eq!(items[1].emotion.high_arousal(), Some(false));

        let csv = dir.join("labels.csv");
        std::fs::write(
            &csv,
            "path,label,speaker\nwav/a.wav,Anger,s1\n\nwav/b.wav,sadness\n",
        )
        .unwrap();
        let items = load(&dir, &Labels::Csv(csv.clone())).unwrap();
        assert_eq!(items[0].path, dir.join("wav/a.wav"));
        assert_eq!(items[1].speaker, None);
        std::fs::write(&csv, "wav/a.wav,furious\n").unwrap();
        let err = load(&dir, &Labels::Csv(csv)).unwrap_err().to_string();
        assert!(
            err.contains("labels.csv:1") && err.contains("unknown label"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
