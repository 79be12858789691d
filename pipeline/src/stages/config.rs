//! The curation config (a preset TOML file): sources of the mixture plus one table per stage.
//! Unknown keys anywhere are errors, so a typo is caught; every field has a default, documented
//! in `docs/curation.md`.
//!
//! # Example
//! ```
//! use koala_pipeline::stages::config::CurateConfig;
//! let cfg = CurateConfig::from_toml_str(r#"
//!     name = "tiny"
//!     seed = 7
//!     [[sources]]
//!     name = "alpaca"
//!     [markers]
//!     mode = "po"
//! "#, "inline").unwrap();
//! assert_eq!(cfg.sources[0].name, "alpaca");
//! assert!(CurateConfig::from_toml_str("sed = 7\n[[sources]]\nname = \"x\"", "inline").is_err());
//! ```
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cleanup::CleanupConfig;
use super::dedup::DedupConfig;
use super::language::LanguageConfig;
use super::markers::MarkersConfig;
use super::mixture::SourceSpec;
use crate::error::{Error, Result};

/// Output options (TOML table `[export]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Write `train.jsonl` / `eval.jsonl` in the Koala/EasyLM format.
    pub jsonl: bool,
    /// Shuffle the JSONL examples (seeded), as Koala's `cat … | shuf`.
    pub shuffle: bool,
    /// Write `eval_prompts.json` (`{"prefix": […], "text": […]}`, Koala's eval format).
    pub eval_prompts: bool,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            jsonl: true,
            shuffle: true,
            eval_prompts: true,
        }
    }
}

/// A whole curation run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurateConfig {
    /// Shown in reports.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Seed of every shuffle (sampling, splits, JSONL order).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The mixture: sources in priority order (their order is the table order for dedup ties).
    pub sources: Vec<SourceSpec>,
    #[serde(default)]
    pub cleanup: CleanupConfig,
    #[serde(default)]
    pub dedup: DedupConfig,
    #[serde(default)]
    pub language: LanguageConfig,
    #[serde(default)]
    pub markers: MarkersConfig,
    /// The BLEU leakage filter ([`crate::leakage::LeakageConfig`]). On by default, against the
    /// shipped eval sets (`builtin:koala`, `builtin:self-instruct`), so that a training mixture
    /// never contains them; `[leakage] enabled = false` turns it off.
    #[serde(default)]
    pub leakage: crate::leakage::LeakageConfig,
    #[serde(default)]
    pub export: ExportConfig,
}

fn default_seed() -> u64 {
    42
}

/// The shipped presets (`pipeline/presets/NAME.toml`), embedded: name and TOML text.
pub const PRESETS: &[(&str, &str)] = &[
    ("chat_hc", include_str!("../../presets/chat_hc.toml")),
    ("hf_pn", include_str!("../../presets/hf_pn.toml")),
    ("hf_po", include_str!("../../presets/hf_po.toml")),
    (
        "instruct_pn",
        include_str!("../../presets/instruct_pn.toml"),
    ),
    (
        "instruct_po",
        include_str!("../../presets/instruct_po.toml"),
    ),
    ("koala-all", include_str!("../../presets/koala-all.toml")),
    (
        "koala-distill",
        include_str!("../../presets/koala-distill.toml"),
    ),
    (
        "open_source_pn",
        include_str!("../../presets/open_source_pn.toml"),
    ),
    (
        "open_source_po",
        include_str!("../../presets/open_source_po.toml"),
    ),
];

impl CurateConfig {
    /// A shipped preset by name (`koala-all`, `koala-distill`, …; see [`PRESETS`]), with no
    /// file to find: what a notebook or a program outside the repository wants.
    ///
    /// ```
    /// use koala_pipeline::stages::config::CurateConfig;
    /// let cfg = CurateConfig::preset("koala-distill").unwrap();
    /// assert_eq!(cfg.name, "koala-distill");
    /// let e = CurateConfig::preset("koala-al").unwrap_err().to_string();
    /// assert!(e.contains("koala-all"), "{e}");
    /// ```
    pub fn preset(name: &str) -> Result<Self> {
        let stem = name.strip_suffix(".toml").unwrap_or(name);
        match PRESETS.iter().find(|(n, _)| *n == stem) {
            Some((n, text)) => Self::from_toml_str(text, &format!("preset {n}")),
            None => Err(Error::Config(format!(
                "no preset {name:?}; the shipped presets are {}",
                PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Parses and validates a config; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let cfg: CurateConfig =
            toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        cfg.validate()
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            return Err(Error::Config("`sources` is empty".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            if !seen.insert(s.name.as_str()) {
                return Err(Error::Config(format!(
                    "source `{}` is listed twice",
                    s.name
                )));
            }
            s.validate()?;
        }
        super::language::LanguageFilter::new(self.language.clone())?;
        super::minhash::MinHashLsh::new(self.dedup.near.clone())?;
        self.leakage.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_file_is_embedded_and_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".toml").map(str::to_string)
            })
            .collect();
        files.sort();
        let embedded: Vec<String> = PRESETS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            embedded, files,
            "PRESETS must list every file in pipeline/presets"
        );
        for (name, _) in PRESETS {
            let from_file = CurateConfig::load(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(CurateConfig::preset(name).unwrap(), from_file, "{name}");
        }
        assert!(CurateConfig::preset("koala-all.toml").is_ok());
    }

    #[test]
    fn unknown_nested_key_is_an_error() {
        let e =
            CurateConfig::from_toml_str("[[sources]]\nname='a'\n[dedup]\nscoep='global'", "t.toml")
                .unwrap_err()
                .to_string();
        assert!(e.contains("t.toml") && e.contains("scoep"), "{e}");
    }

    #[test]
    fn leakage_table_is_typed_and_checked() {
        let c =
            CurateConfig::from_toml_str("[[sources]]\nname='a'\n[leakage]\nthreshold=25.0", "t")
                .unwrap();
        assert_eq!(c.leakage.threshold, 25.0);
        let e = CurateConfig::from_toml_str("[[sources]]\nname='a'\n[leakage]\ntreshold=25.0", "t");
        assert!(e.unwrap_err().to_string().contains("treshold"));
        let none = CurateConfig::from_toml_str("[[sources]]\nname='a'", "t").unwrap();
        assert!(none.leakage.enabled);
        assert_eq!(
            none.leakage.test_sets,
            [
                std::path::PathBuf::from("builtin:koala"),
                std::path::PathBuf::from("builtin:self-instruct")
            ]
        );
        let off =
            CurateConfig::from_toml_str("[[sources]]\nname='a'\n[leakage]\nenabled=false", "t")
                .unwrap();
        assert!(!off.leakage.enabled);
    }

    #[test]
    fn defaults_are_koala() {
        let c = CurateConfig::from_toml_str("[[sources]]\nname='sharegpt'", "t").unwrap();
        assert_eq!(c.seed, 42);
        assert_eq!(c.cleanup.origin_keywords.len(), 8);
        assert_eq!(c.markers.positive, "GPT:");
        assert!(!c.dedup.near.enabled);
        assert_eq!(c.language.keep, ["eng"]);
    }

    #[test]
    fn every_shipped_preset_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let cfg = CurateConfig::load(&path).unwrap();
            assert_eq!(
                Some(cfg.name.as_str()),
                path.file_stem().and_then(|s| s.to_str())
            );
            names.push(cfg.name);
        }
        names.sort();
        assert_eq!(
            names,
            [
                "chat_hc",
                "hf_pn",
                "hf_po",
                "instruct_pn",
                "instruct_po",
                "koala-all",
                "koala-distill",
                "open_source_pn",
                "open_source_po"
            ]
        );
    }
}
