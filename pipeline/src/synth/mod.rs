//! Synthetic corpora in the real published formats (`koala synth`).
