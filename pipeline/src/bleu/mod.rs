//! Our own BLEU, equal to sacrebleu 2.x.
