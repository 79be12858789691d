//! The KV cache of one sequence: per layer, the keys (after RoPE) and values of every position so
//! far, `[pos, kv_dim]` row-major. It grows as the sequence does and never past the model's
//! `max_position_embeddings`; [`bytes_per_token`] is what each position costs.
use crate::config::LlamaConfig;

/// Keys and values of one sequence.
pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    /// Cached positions.
    pub len: usize,
    /// The most positions this cache may hold.
    pub capacity: usize,
    kv_dim: usize,
}

impl KvCache {
    /// An empty cache for a model with `cfg`, reserving room for `reserve` positions.
    pub fn new(cfg: &LlamaConfig, reserve: usize) -> Self {
        let kv_dim = cfg.kv_dim();
        let reserve = reserve.min(cfg.max_position_embeddings);
        let l = cfg.num_hidden_layers;
        KvCache {
            k: (0..l)
                .map(|_| Vec::with_capacity(reserve * kv_dim))
                .collect(),
            v: (0..l)
                .map(|_| Vec::with_capacity(reserve * kv_dim))
                .collect(),
            len: 0,
            capacity: cfg.max_position_embeddings,
            kv_dim,
        }
    }

    /// Positions still free.
    pub fn free(&self) -> usize {
        self.capacity - self.len
    }

    /// Bytes held now (allocated capacity, not just the used part).
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|x| x.capacity() * 4).sum()
    }

    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_dim
    }
}

/// KV-cache bytes per token of context: layers × 2 (k and v) × kv_dim × 4 bytes.
pub fn bytes_per_token(cfg: &LlamaConfig) -> usize {
    cfg.num_hidden_layers * 2 * cfg.kv_dim() * 4
}
