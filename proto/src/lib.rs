//! The `koala.trainer.v1` gRPC API: messages, the `TrainerService` client and server, generated
//! from `proto/koala/trainer/v1/trainer.proto` by tonic/prost.
//!
//! ```
//! use koala_proto::v1::{JobSpec, JobState, job_spec::BaseModel};
//! let spec = JobSpec {
//!     base_model: Some(BaseModel::InitConfig("models/tiny/config.json".into())),
//!     shards_dir: "shards/demo".into(),
//!     out_dir: "runs/demo".into(),
//!     ..Default::default()
//! };
//! assert_eq!(JobState::Queued.as_str_name(), "JOB_STATE_QUEUED");
//! assert!(spec.devices.is_empty());
//! ```

/// Version 1 of the trainer API (`package koala.trainer.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("koala.trainer.v1");

    /// The encoded `FileDescriptorSet` of this package, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("koala_trainer_v1_descriptor");
}
