//! The parts of a SentencePiece `tokenizer.model` (a `sentencepiece_model.proto` `ModelProto`)
//! that a GGUF vocabulary needs: the pieces with their scores and types, the special ids, and
//! whether a space is prefixed to the input. Decoded with `prost`; unknown fields are skipped.
use std::path::Path;

use prost::Message;

use crate::{Error, Result};

/// `ModelProto` (only the fields we read).
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
}

/// `ModelProto.SentencePiece`.
#[derive(Clone, PartialEq, Message)]
pub struct Piece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6: the same
    /// numbers as GGUF's token types.
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
}

/// `TrainerSpec` (only the fields we read).
#[derive(Clone, PartialEq, Message)]
pub struct TrainerSpec {
    /// UNIGRAM = 1, BPE = 2, WORD = 3, CHAR = 4.
    #[prost(int32, optional, tag = "3")]
    pub model_type: Option<i32>,
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    pub unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41")]
    pub bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42")]
    pub eos_id: Option<i32>,
    #[prost(int32, optional, tag = "43")]
    pub pad_id: Option<i32>,
}

/// `NormalizerSpec` (only the field we read).
#[derive(Clone, PartialEq, Message)]
pub struct NormalizerSpec {
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
}

/// A decoded `tokenizer.model`.
#[derive(Clone, Debug, PartialEq)]
pub struct SentencePiece {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    /// Whether the model is BPE (llama.cpp's `llama` vocabulary is SentencePiece BPE).
    pub is_bpe: bool,
    pub unk_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_dummy_prefix: bool,
}

impl SentencePiece {
    /// Reads and decodes `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let m = ModelProto::decode(bytes.as_slice())
            .map_err(|e| Error::format(path, format!("not a SentencePiece model: {e}")))?;
        if m.pieces.is_empty() {
            return Err(Error::format(path, "the SentencePiece model has no pieces"));
        }
        let mut pieces = Vec::with_capacity(m.pieces.len());
        let mut scores = Vec::with_capacity(m.pieces.len());
        let mut types = Vec::with_capacity(m.pieces.len());
        for (i, p) in m.pieces.iter().enumerate() {
            let Some(text) = p.piece.clone() else {
                return Err(Error::format(
                    path,
                    format!("pieces[{i}]: no `piece` string"),
                ));
            };
            let ty = p.r#type.unwrap_or(1);
            if !(1..=6).contains(&ty) {
                return Err(Error::format(
                    path,
                    format!("pieces[{i}] ({text:?}): unknown type {ty}"),
                ));
            }
            pieces.push(text);
            scores.push(p.score.unwrap_or(0.0));
            types.push(ty);
        }
        let ts = m.trainer_spec.unwrap_or_default();
        let n = pieces.len();
        let id = |v: Option<i32>, default: i32| -> Option<u32> {
            let v = v.unwrap_or(default);
            (v >= 0 && (v as usize) < n).then_some(v as u32)
        };
        Ok(SentencePiece {
            is_bpe: ts.model_type.unwrap_or(1) == 2,
            unk_id: id(ts.unk_id, 0),
            bos_id: id(ts.bos_id, 1),
            eos_id: id(ts.eos_id, 2),
            pad_id: id(ts.pad_id, -1),
            add_dummy_prefix: m
                .normalizer_spec
                .and_then(|n| n.add_dummy_prefix)
                .unwrap_or(true),
            pieces,
            scores,
            types,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pieces_and_special_ids() {
        let m = ModelProto {
            pieces: vec![
                Piece {
                    piece: Some("<unk>".into()),
                    score: Some(0.0),
                    r#type: Some(2),
                },
                Piece {
                    piece: Some("<s>".into()),
                    score: Some(0.0),
                    r#type: Some(3),
                },
                Piece {
                    piece: Some("</s>".into()),
                    score: Some(0.0),
                    r#type: Some(3),
                },
                Piece {
                    piece: Some("\u{2581}the".into()),
                    score: Some(-1.5),
                    r#type: None,
                },
            ],
            trainer_spec: Some(TrainerSpec {
                model_type: Some(2),
                byte_fallback: Some(true),
                unk_id: None,
                bos_id: None,
                eos_id: None,
                pad_id: None,
            }),
            normalizer_spec: Some(NormalizerSpec {
                add_dummy_prefix: Some(false),
            }),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.model");
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let sp = SentencePiece::from_file(&path).unwrap();
        assert_eq!(sp.pieces[3], "\u{2581}the");
        assert_eq!(sp.scores[3], -1.5);
        assert_eq!(sp.types, vec![2, 3, 3, 1]);
        assert!(sp.is_bpe);
        assert_eq!(
            (sp.unk_id, sp.bos_id, sp.eos_id, sp.pad_id),
            (Some(0), Some(1), Some(2), None)
        );
        assert!(!sp.add_dummy_prefix);

        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        let err = SentencePiece::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.model") && err.contains("SentencePiece"),
            "{err}"
        );
    }
}
