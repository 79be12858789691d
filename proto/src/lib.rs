//! The `koala.trainer.v1` gRPC API. Filled in by the trainer-daemon work.
