//! BLEU-based test-set leakage filtering (decontaminate and audit).
