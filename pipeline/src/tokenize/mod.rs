//! Tokenisation with loss masks, and packed training shards.
