//! Curation stages, one module per stage, in recipe order.
