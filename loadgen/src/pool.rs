//! Bulk work over a few pipelined connections: `prepare` issues and activates cards, `validate`
//! reads balances and resolves unknown operations by sending large batches (up to the server's
//! `batch_events_max`) on every connection with several frames in flight each.

use std::future::Future;

use anyhow::{Context, anyhow, bail};
use pinswitch_protocol::{Client, ClientError, ClientOptions, HelloReply};
use tokio::task::JoinSet;

/// Largest batch the bulk commands send, whatever the server allows.
pub(crate) const BULK_BATCH_MAX: usize = 8_000;

/// Connections to one server plus its limits.
pub(crate) struct Pool {
    clients: Vec<Client>,
    in_flight_per_connection: usize,
    pub hello: HelloReply,
}

/// The TLS client every connection uses, when `--tls-ca` was given.
static TLS: std::sync::OnceLock<pinswitch_protocol::tls::TlsClient> = std::sync::OnceLock::new();
/// Whether connections are QUIC (`--quic`).
static QUIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Reads the TLS flags once, before any connection.
pub(crate) fn configure_tls(args: &crate::args::TlsArgs) -> anyhow::Result<()> {
    let Some(ca) = &args.tls_ca else { return Ok(()) };
    let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let tls = pinswitch_protocol::tls::TlsClient::from_pem_files(ca, identity, &args.tls_name)
        .context("the TLS flags")?;
    let _ = TLS.set(tls);
    let _ = QUIC.set(args.quic);
    Ok(())
}

/// One connection, over TLS or QUIC when configured.
pub(crate) async fn open(
    address: &str,
    options: ClientOptions,
) -> Result<Client, pinswitch_protocol::ClientError> {
    match TLS.get() {
        Some(tls) if QUIC.get() == Some(&true) => Client::connect_quic(address, tls, options).await,
        Some(tls) => Client::connect_tls(address, tls, options).await,
        None => Client::connect_with_options(address, options).await,
    }
}

/// Opens one connection and greets the server.
pub(crate) async fn connect(
    address: &str,
    in_flight: usize,
    client_name: &str,
) -> anyhow::Result<(Client, HelloReply)> {
    let options = ClientOptions { in_flight_max: in_flight.max(1), ..ClientOptions::default() };
    let client =
        open(address, options).await.with_context(|| format!("connecting to {address}"))?;
    let hello = client.hello(client_name).await.with_context(|| format!("greeting {address}"))?;
    Ok((client, hello))
}

/// The batches in flight: each task yields its chunk's index, the results it expects and the
/// switch's answer.
type BatchTasks<R> = JoinSet<(usize, usize, Result<Vec<R>, ClientError>)>;

impl Pool {
    /// Opens `connections` connections with `in_flight` frames each (both at least 1, and no
    /// more in flight than the server allows).
    pub(crate) async fn connect(
        address: &str,
        connections: usize,
        in_flight: usize,
    ) -> anyhow::Result<Pool> {
        let (first, hello) = connect(address, in_flight, "pinswitch-loadgen").await?;
        let in_flight = in_flight.clamp(1, (hello.in_flight_per_connection_max as usize).max(1));
        let mut clients = vec![first];
        for _ in 1..connections.max(1) {
            clients.push(connect(address, in_flight, "pinswitch-loadgen").await?.0);
        }
        Ok(Pool { clients, in_flight_per_connection: in_flight, hello })
    }

    /// The largest batch to send: `wanted`, the server limit and `BULK_BATCH_MAX`.
    pub(crate) fn batch_len(&self, wanted: usize) -> usize {
        wanted.clamp(1, BULK_BATCH_MAX).min((self.hello.batch_events_max as usize).max(1))
    }

    /// Splits `items` into chunks of `chunk_len`, sends them with `call` over all connections
    /// (pipelined), and returns the results in item order. `call` must return one result per item.
    pub(crate) async fn map_chunks<T, R, F, Fut>(
        &self,
        items: Vec<T>,
        chunk_len: usize,
        call: F,
    ) -> anyhow::Result<Vec<R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(Client, Vec<T>) -> Fut,
        Fut: Future<Output = Result<Vec<R>, ClientError>> + Send + 'static,
    {
        let chunk_len = chunk_len.max(1);
        let mut items = items.into_iter();
        let mut chunks: Vec<Vec<T>> = Vec::new();
        loop {
            let chunk: Vec<T> = items.by_ref().take(chunk_len).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let mut results: Vec<Option<Vec<R>>> = (0..chunks.len()).map(|_| None).collect();
        let limit = self.clients.len() * self.in_flight_per_connection;
        let mut tasks = JoinSet::new();
        for (index, chunk) in chunks.into_iter().enumerate() {
            while tasks.len() >= limit {
                Self::collect_one(&mut tasks, &mut results).await?;
            }
            let client = self.clients[index % self.clients.len()].clone();
            let expected = chunk.len();
            let call = call(client, chunk);
            tasks.spawn(async move { (index, expected, call.await) });
        }
        while !tasks.is_empty() {
            Self::collect_one(&mut tasks, &mut results).await?;
        }
        Ok(results.into_iter().flatten().flatten().collect())
    }

    async fn collect_one<R: Send + 'static>(
        tasks: &mut BatchTasks<R>,
        results: &mut [Option<Vec<R>>],
    ) -> anyhow::Result<()> {
        let Some(joined) = tasks.join_next().await else {
            return Ok(());
        };
        let (index, expected, outcome) =
            joined.map_err(|error| anyhow!("a request task failed: {error}"))?;
        let chunk = outcome.context("the switch did not answer a batch")?;
        if chunk.len() != expected {
            bail!("expected {expected} results, got {}", chunk.len());
        }
        results[index] = Some(chunk);
        Ok(())
    }
}
