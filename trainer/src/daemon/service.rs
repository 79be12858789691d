//! The `TrainerService` implementation: thin async handlers over the store and the scheduler.
//! `GetJob` and `ListJobs` read the store's in-memory job table directly; event and metric reads
//! and all writes run on the blocking pool (reads bounded by a semaphore), so that RPCs stay
//! responsive and a burst of reads cannot starve the runtime. `Generate` is served by
//! [`super::generate::Generator`].
//!
//! [`TrainerRoutes`] is what the server mounts: it answers `GetJob` and `ListJobs` with the
//! store's pre-encoded jobs ([`super::wire`]) and hands every other method to the generated
//! `TrainerServiceServer`.
use std::pin::Pin;
use std::sync::Arc;

use koala_proto::v1::trainer_service_server::{SERVICE_NAME, TrainerService, TrainerServiceServer};
use koala_proto::v1::{
    CancelJobRequest, GenerateRequest, GetJobRequest, GetMetricsRequest, GetMetricsResponse, Job,
    JobEvent, JobSpec, JobState, ListJobsRequest, ListJobsResponse, WatchJobRequest,
    job_event::Kind,
};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::error::DaemonError;
use super::generate::{GenerateOptions, GenerateStream, Generator};
use super::hooks::pause_point;
use super::scheduler::{Core, Scheduler};
use super::store::{CancelOutcome, SubmitOutcome, is_terminal};
use super::validate;
use super::wire::{EncodedJob, EncodedJobPage};

/// Default and largest `ListJobs` page.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;
/// Concurrent store reads.
const READ_PERMITS: usize = 8;

/// The gRPC service.
#[derive(Clone)]
pub struct TrainerApi {
    core: Arc<Core>,
    scheduler: Arc<Scheduler>,
    reads: Arc<Semaphore>,
    max_queued: u64,
    generator: Arc<Generator>,
}

impl TrainerApi {
    /// The service, with `Generate` at its defaults (CPU, job checkpoints only).
    pub fn new(core: Arc<Core>, scheduler: Arc<Scheduler>, max_queued: u64) -> Self {
        TrainerApi {
            generator: Arc::new(Generator::new(core.clone(), GenerateOptions::default())),
            core,
            scheduler,
            reads: Arc::new(Semaphore::new(READ_PERMITS)),
            max_queued,
        }
    }

    /// Serves `Generate` with `opts` (device, model directories, engine limits).
    pub fn with_generate(mut self, opts: GenerateOptions) -> Self {
        self.generator = Arc::new(Generator::new(self.core.clone(), opts));
        self
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
    }

    /// `GetJob`: the job's stored encoding (no SQLite, no blocking pool, no copy).
    pub fn get_job_encoded(&self, req: GetJobRequest) -> Result<EncodedJob, Status> {
        self.core
            .store
            .get_encoded(req.id)
            .ok_or_else(|| not_found(req.id))
    }

    /// `ListJobs`: checks the request, then pages the stored encodings.
    pub fn list_jobs_encoded(&self, req: ListJobsRequest) -> Result<EncodedJobPage, Status> {
        let page = match req.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size: {n} is above the limit {MAX_PAGE}"
                )));
            }
            n => n,
        };
        let mut states = Vec::new();
        for s in &req.states {
            match JobState::try_from(*s) {
                Ok(JobState::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "states: {s} is not a job state"
                    )));
                }
                Ok(st) => states.push(st),
            }
        }
        let before = if req.page_token.is_empty() {
            None
        } else {
            Some(req.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument("page_token: not a token from a ListJobs response")
            })?)
        };
        let (jobs, next) = self.core.store.list_encoded(&states, page as usize, before);
        Ok(EncodedJobPage {
            jobs,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        })
    }
}

fn internal(e: DaemonError) -> Status {
    tracing::error!("{e}");
    Status::internal(e.to_string())
}

fn not_found(id: u64) -> Status {
    Status::not_found(format!("no job {id}"))
}

fn is_terminal_event(ev: &JobEvent) -> bool {
    matches!(&ev.kind, Some(Kind::StateChanged(s)) if is_terminal(s.state()))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl TrainerService for TrainerApi {
    async fn submit_job(&self, req: Request<JobSpec>) -> Result<Response<Job>, Status> {
        let spec = req.into_inner();
        let max_queued = self.max_queued;
        let scheduler = self.scheduler.clone();
        // Writes go straight to the blocking pool: the writer connection serialises them anyway.
        let core = self.core.clone();
        let job = tokio::task::spawn_blocking(move || -> Result<Job, Status> {
            if !spec.idempotency_key.is_empty()
                && let Some(job) = core
                    .store
                    .get_by_key(&spec.idempotency_key)
                    .map_err(internal)?
            {
                return if job.spec.as_ref() == Some(&spec) {
                    Ok(job)
                } else {
                    Err(Status::already_exists(format!(
                        "idempotency_key {:?} already names job {} with a different spec",
                        spec.idempotency_key, job.id
                    )))
                };
            }
            let paths = validate::validate(&spec, &core.data_root)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let out_dir = paths.out_dir.to_string_lossy().into_owned();
            match core
                .store
                .submit(&spec, &out_dir, max_queued)
                .map_err(internal)?
            {
                SubmitOutcome::Created(job, ev) => {
                    core.publish([ev]);
                    pause_point("submitted");
                    scheduler.wake();
                    tracing::info!("job {} queued", job.id);
                    Ok(job)
                }
                SubmitOutcome::Existing(job) => Ok(job),
                SubmitOutcome::KeyConflict(job) => Err(Status::already_exists(format!(
                    "idempotency_key {:?} already names job {} with a different spec",
                    spec.idempotency_key, job.id
                ))),
                SubmitOutcome::QueueFull(n) => Err(Status::resource_exhausted(format!(
                    "the queue is full ({n} jobs queued; max_queued_jobs = {max_queued})"
                ))),
                SubmitOutcome::OutDirBusy(other) => Err(Status::failed_precondition(format!(
                    "out_dir: job {other} is already writing to {out_dir}"
                ))),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("submit task failed: {e}")))??;
        Ok(Response::new(job))
    }

    // The server answers GetJob and ListJobs through `TrainerRoutes` with the same functions'
    // encoded replies; these decode them for callers of the trait itself.
    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let job = self.get_job_encoded(req.into_inner())?;
        let job = job
            .decode_job()
            .map_err(|e| Status::internal(format!("stored job: {e}")))?;
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let page = self.list_jobs_encoded(req.into_inner())?;
        let page = page
            .decode_page()
            .map_err(|e| Status::internal(format!("stored job: {e}")))?;
        Ok(Response::new(page))
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let id = req.into_inner().id;
        let scheduler = self.scheduler.clone();
        let outcome = tokio::task::spawn_blocking(move || scheduler.cancel(id))
            .await
            .map_err(|e| Status::internal(format!("cancel task failed: {e}")))?
            .map_err(internal)?;
        match outcome {
            CancelOutcome::Cancelled(job, _)
            | CancelOutcome::Requested(job)
            | CancelOutcome::AlreadyFinal(job) => Ok(Response::new(job)),
            CancelOutcome::NotFound => Err(not_found(id)),
        }
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        req: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let WatchJobRequest { id, after_seq } = req.into_inner();
        // Subscribe before reading the history, so that nothing falls between the two.
        let mut live = self.core.events.subscribe();
        // The job is read before its events: if it is already final, the history holds every
        // event it will ever have.
        let (finished, history) = self
            .blocking(move |c| {
                let job = c
                    .store
                    .get(id)
                    .map_err(internal)?
                    .ok_or_else(|| not_found(id))?;
                let evs = c.store.events_after(id, after_seq).map_err(internal)?;
                Ok((is_terminal(job.state()), evs))
            })
            .await?;
        let (tx, rx) = mpsc::channel(256);
        let api = self.clone();
        tokio::spawn(async move {
            let mut last = after_seq;
            // Sends events in order past `last`; returns true when the stream is over.
            async fn forward(
                tx: &mpsc::Sender<Result<JobEvent, Status>>,
                evs: Vec<JobEvent>,
                last: &mut u64,
            ) -> bool {
                for ev in evs {
                    if ev.seq <= *last {
                        continue;
                    }
                    *last = ev.seq;
                    let end = is_terminal_event(&ev);
                    if tx.send(Ok(ev)).await.is_err() || end {
                        return true;
                    }
                }
                false
            }
            if forward(&tx, history, &mut last).await || finished {
                return;
            }
            loop {
                let got = tokio::select! {
                    r = live.recv() => r,
                    _ = tx.closed() => return,
                };
                let evs = match got {
                    Ok(ev) if ev.job_id != id || ev.seq <= last => continue,
                    Ok(ev) if ev.seq == last + 1 => vec![ev],
                    // A gap (an event published out of order, or a lagging receiver): read the
                    // store, which holds every event before it is published.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let from = last;
                        match api
                            .blocking(move |c| c.store.events_after(id, from).map_err(internal))
                            .await
                        {
                            Ok(evs) => evs,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if forward(&tx, evs, &mut last).await {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metrics(
        &self,
        req: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let id = req.into_inner().id;
        let points = self
            .blocking(move |c| {
                c.store
                    .get(id)
                    .map_err(internal)?
                    .ok_or_else(|| not_found(id))?;
                c.store.metrics(id).map_err(internal)
            })
            .await?;
        Ok(Response::new(GetMetricsResponse { points }))
    }

    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        Ok(Response::new(
            self.generator.generate(req.into_inner()).await?,
        ))
    }
}

const GET_JOB: &str = "/koala.trainer.v1.TrainerService/GetJob";
const LIST_JOBS: &str = "/koala.trainer.v1.TrainerService/ListJobs";

/// The mounted `TrainerService`: `GetJob` and `ListJobs` answered from pre-encoded jobs, every
/// other method (`Generate` and the streaming `WatchJob` included) by the generated server. Same
/// name, paths and message limits as that server.
#[derive(Clone)]
pub struct TrainerRoutes {
    api: Arc<TrainerApi>,
    generated: TrainerServiceServer<TrainerApi>,
    max_decoding: usize,
    max_encoding: usize,
}

impl TrainerRoutes {
    /// Requests above `max_decoding` bytes and replies above `max_encoding` are refused.
    pub fn new(api: TrainerApi, max_decoding: usize, max_encoding: usize) -> Self {
        TrainerRoutes {
            generated: TrainerServiceServer::new(api.clone())
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
            api: Arc::new(api),
            max_decoding,
            max_encoding,
        }
    }

    fn unary<M, R, S, B>(
        &self,
        method: S,
        req: http::Request<B>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>
    where
        M: prost::Message + Default + Send + 'static,
        R: prost::Message + Send + 'static,
        S: UnaryService<M, Response = R> + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let mut grpc = Grpc::new(ProstCodec::<R, M>::default())
            .apply_max_message_size_config(Some(self.max_decoding), Some(self.max_encoding));
        Box::pin(async move { Ok(grpc.unary(method, req).await) })
    }
}

impl NamedService for TrainerRoutes {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for TrainerRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            GET_JOB => self.unary(GetJobSvc(self.api.clone()), req),
            LIST_JOBS => self.unary(ListJobsSvc(self.api.clone()), req),
            _ => self.generated.call(req),
        }
    }
}

struct GetJobSvc(Arc<TrainerApi>);

impl UnaryService<GetJobRequest> for GetJobSvc {
    type Response = EncodedJob;
    type Future = std::future::Ready<Result<Response<EncodedJob>, Status>>;

    fn call(&mut self, req: Request<GetJobRequest>) -> Self::Future {
        std::future::ready(self.0.get_job_encoded(req.into_inner()).map(Response::new))
    }
}

struct ListJobsSvc(Arc<TrainerApi>);

impl UnaryService<ListJobsRequest> for ListJobsSvc {
    type Response = EncodedJobPage;
    type Future = std::future::Ready<Result<Response<EncodedJobPage>, Status>>;

    fn call(&mut self, req: Request<ListJobsRequest>) -> Self::Future {
        std::future::ready(
            self.0
                .list_jobs_encoded(req.into_inner())
                .map(Response::new),
        )
    }
}
