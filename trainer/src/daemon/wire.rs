//! Pre-encoded replies for the hot read RPCs. The store keeps every job's protobuf encoding next
//! to the job (re-encoded only when the job changes), so `GetJob` answers with those bytes and
//! `ListJobs` with a page of them, instead of cloning each `Job` (a dozen heap strings with its
//! spec) and encoding it again on every call. On the wire the replies are exactly `Job` and
//! `ListJobsResponse`: an embedded message and a `bytes` field are the same length-delimited
//! field, so any client decodes them with the `koala.trainer.v1` proto.
//!
//! ```
//! use koala_proto::v1::{Job, ListJobsResponse};
//! use koala_trainer::daemon::wire::{EncodedJob, EncodedJobPage};
//! use prost::Message;
//! let job = Job { id: 7, step: 3, ..Default::default() };
//! let one = EncodedJob::new(&job);
//! assert_eq!(Job::decode(one.encode_to_vec().as_slice()).unwrap(), job);
//! let page = EncodedJobPage { jobs: vec![one.bytes().clone()], next_page_token: "7".into() };
//! let back = ListJobsResponse::decode(page.encode_to_vec().as_slice()).unwrap();
//! assert_eq!(back.jobs, vec![job]);
//! assert_eq!(back.next_page_token, "7");
//! ```
use koala_proto::v1::{Job, ListJobsResponse};
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

/// A `Job`, already encoded. Decoding keeps every field's bytes as they came, so any `Job`
/// encoding round-trips.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedJob(Bytes);

impl EncodedJob {
    /// Encodes `job` once.
    pub fn new(job: &Job) -> Self {
        EncodedJob(job.encode_to_vec().into())
    }

    /// The encoding of the job (a complete `Job` message).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Decodes the job again (for in-process callers that want the struct).
    pub fn decode_job(&self) -> Result<Job, prost::DecodeError> {
        Job::decode(self.0.clone())
    }
}

impl Message for EncodedJob {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Re-emit the field as it came: key, then the value in its wire type. (Each field copies
        // what came before: fine for a job's dozen fields; the server only ever encodes.)
        let mut out = Vec::with_capacity(self.0.len() + 16);
        out.extend_from_slice(&self.0);
        encoding::encode_key(tag, wire_type, &mut out);
        match wire_type {
            WireType::Varint => encoding::encode_varint(encoding::decode_varint(buf)?, &mut out),
            WireType::ThirtyTwoBit => {
                let mut v = 0u32;
                encoding::fixed32::merge(wire_type, &mut v, buf, ctx)?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            WireType::SixtyFourBit => {
                let mut v = 0u64;
                encoding::fixed64::merge(wire_type, &mut v, buf, ctx)?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            WireType::LengthDelimited | WireType::StartGroup | WireType::EndGroup => {
                // Groups are not part of a Job: prost's own wire-type error for them.
                let mut value = Bytes::new();
                encoding::bytes::merge(wire_type, &mut value, buf, ctx)?;
                encoding::encode_varint(value.len() as u64, &mut out);
                out.extend_from_slice(&value);
            }
        }
        self.0 = out.into();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// A `ListJobsResponse` whose jobs are already encoded (each a complete `Job` message).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedJobPage {
    /// Field 1, `repeated Job jobs`: one encoded job each.
    pub jobs: Vec<Bytes>,
    /// Field 2: empty on the last page.
    pub next_page_token: String,
}

impl EncodedJobPage {
    /// Decodes the page into the generated type (for in-process callers).
    pub fn decode_page(&self) -> Result<ListJobsResponse, prost::DecodeError> {
        Ok(ListJobsResponse {
            jobs: self
                .jobs
                .iter()
                .map(|b| Job::decode(b.clone()))
                .collect::<Result<_, _>>()?,
            next_page_token: self.next_page_token.clone(),
        })
    }
}

impl Message for EncodedJobPage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for job in &self.jobs {
            encoding::bytes::encode(1, job, buf);
        }
        if !self.next_page_token.is_empty() {
            encoding::string::encode(2, &self.next_page_token, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => {
                let mut job = Bytes::new();
                encoding::bytes::merge(wire_type, &mut job, buf, ctx)?;
                self.jobs.push(job);
                Ok(())
            }
            2 => encoding::string::merge(wire_type, &mut self.next_page_token, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::bytes::encoded_len_repeated(1, &self.jobs)
            + if self.next_page_token.is_empty() {
                0
            } else {
                encoding::string::encoded_len(2, &self.next_page_token)
            }
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.next_page_token.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koala_proto::v1::{Hyperparameters, JobSpec, JobState, job_spec::BaseModel};

    fn job(id: u64) -> Job {
        Job {
            id,
            spec: Some(JobSpec {
                name: format!("job {id} é"),
                base_model: Some(BaseModel::InitConfig("models/m/config.json".into())),
                shards_dir: "shards/s".into(),
                out_dir: format!("runs/{id}"),
                preset: "tiny-cpu".into(),
                hyperparameters: Some(Hyperparameters {
                    lr: Some(2e-5),
                    batch_size: Some(8),
                    ..Default::default()
                }),
                seed: 42,
                ..Default::default()
            }),
            state: JobState::Running as i32,
            created_at_ms: 1_700_000_000_000,
            step: 12,
            total_steps: 100,
            last_loss: 1.25,
            last_checkpoint: "runs/1/checkpoint-10".into(),
            attempts: 2,
            ..Default::default()
        }
    }

    #[test]
    fn pages_decode_as_the_generated_response() {
        let jobs: Vec<Job> = (1..=5).map(job).collect();
        for token in ["", "3"] {
            let page = EncodedJobPage {
                jobs: jobs
                    .iter()
                    .map(|j| EncodedJob::new(j).bytes().clone())
                    .collect(),
                next_page_token: token.into(),
            };
            let want = ListJobsResponse {
                jobs: jobs.clone(),
                next_page_token: token.into(),
            };
            // Byte for byte what prost's derived code writes for the same response.
            assert_eq!(page.encode_to_vec(), want.encode_to_vec());
            assert_eq!(page.encoded_len(), want.encoded_len());
            assert_eq!(page.decode_page().unwrap(), want);
            assert_eq!(
                EncodedJobPage::decode(want.encode_to_vec().as_slice()).unwrap(),
                page
            );
        }
    }

    #[test]
    fn encoded_jobs_round_trip_every_wire_type() {
        // Varints, a fixed32 (the loss), nested messages and strings.
        let j = job(9);
        let enc = EncodedJob::new(&j);
        assert_eq!(enc.encode_to_vec(), j.encode_to_vec());
        let back = EncodedJob::decode(j.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, enc);
        assert_eq!(back.decode_job().unwrap(), j);
        // A fixed64 field (not in Job: kept as an unknown field, as it came).
        let mut raw = j.encode_to_vec();
        encoding::encode_key(99, WireType::SixtyFourBit, &mut raw);
        raw.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(
            EncodedJob::decode(raw.as_slice()).unwrap().bytes()[..],
            raw[..]
        );
        // A truncated fixed32 is an error, not a panic.
        let mut cut = Vec::new();
        encoding::encode_key(9, WireType::ThirtyTwoBit, &mut cut);
        cut.extend_from_slice(&[0, 0]);
        assert!(EncodedJob::decode(cut.as_slice()).is_err());
        assert!(Job::decode(cut.as_slice()).is_err());
        // Groups are no part of a Job: an error, as prost's own decoder gives for them.
        let mut group = Vec::new();
        encoding::encode_key(2, WireType::StartGroup, &mut group);
        assert!(EncodedJob::decode(group.as_slice()).is_err());
    }
}
