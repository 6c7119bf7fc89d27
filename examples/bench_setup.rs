//! Helper for `bench/run.sh`: waits for a Keygate server, creates API keys
//! through the management API or seeds them straight into its database, and
//! authorizes keys (to warm the cache and to verify that every key is still
//! allowed after a load run).
//!
//! ```text
//! bench_setup wait      --endpoint URL [--timeout-secs 30]
//! bench_setup create    --endpoint URL --management-key KEY --count N --out FILE
//!                       [--owner acme] [--scope bench:read] [--concurrency 32]
//! bench_setup seed      --database-url URL --count N --out FILE
//!                       [--owner acme] [--scope bench:read] [--chunk 10000]
//!                       [--concurrency 1 (SQLite) / 2 (PostgreSQL)]
//! bench_setup authorize --endpoint URL --keys FILE [--concurrency 32]
//!                       [--scope bench:read] [--client-ip 10.0.0.1]
//! bench_setup data-file --keys FILE --out FILE [--scope bench:read] [--client-ip 10.0.0.1]
//!                        [--format authorize|ext-authz]
//! bench_setup usage-writes --database-url URL [--active 100000] [--rounds 3]
//! bench_setup usage-flush  --database-url URL [--active 100000] [--rounds 3]
//!                       [--precision-secs 60]
//! bench_setup load      --endpoint URL --rpc authorize|ext-authz|check --keys FILE
//!                       [--duration-secs 10] [--concurrency 32] [--connections 4]
//!                       [--scope bench:read] [--client-ip 10.0.0.1] [--offset 0]
//! ```
//!
//! `create` writes one secret per line to `--out`. `seed` writes the same
//! kind of keys (and the same output) without a server: for key counts where
//! one `CreateKey` call per key takes too long (1 000 000 keys). It makes
//! each key as `CreateKey` does (the request validated by
//! `validate_new_key`, the key built by the server's `issue_key`) and stores
//! `--chunk` keys per transaction with `Store::insert_keys`, `--concurrency`
//! transactions at a time; the database must be migrated already (`keygate
//! bootstrap` does that). `authorize` calls
//! Authorize once per key and exits non-zero unless every answer is
//! `DECISION_ALLOW`. `data-file` writes a JSON array of AuthorizeRequest
//! messages for ghz's `--data-file` (sent round robin), or with `--format
//! ext-authz` the same questions as Envoy ext_authz CheckRequests.
//! `usage-writes` measures what the usage flushers' writes cost for
//! `--active` keys in use (a random sample of the database's keys): per
//! round, one `record_last_used` (each credential's last use, one
//! `key_last_uses` row per key, as when they fall due) and one `add_usage_counts` (one
//! hourly row per key), with the wall time and this process's CPU time of
//! each (on SQLite the database's work is in this process).
//! `usage-flush` measures the same through the server's own flusher
//! (`UsageRecorder`): every `--active` key used once per round, rounds a
//! simulated minute apart, so each count flush carries every key's counts
//! and a last use due under `--precision-secs`.
//! `load` is a load generator whose own cost per call is the same for every
//! RPC: each request is encoded once, before the clock starts, and sent as
//! bytes; answers are taken as bytes (every 64th decoded and checked to be
//! an allow). ghz builds every message from JSON through reflection, which
//! costs it more for an ext_authz `CheckRequest` than for an
//! `AuthorizeRequest`; on two CPUs shared with the server that changes the
//! load the server sees, and with it the server's CPU per call. `load`
//! prints calls, rps, p50 and p99 on one line.
//!
//! Arguments are parsed by hand so the example needs no extra dependencies.

use std::{
    collections::HashMap,
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use keygate::{Client, v1 as pb};
use keygate_domain::{
    ApiKey,
    environment::Environments,
    keyformat::KeyFormat,
    validation::{self, NewKey, NewKeyInput},
};
use keygate_persistence::{Backend, Store, StoreError};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Separate HTTP/2 connections the work is spread over.
const CHANNELS: usize = 4;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Result<Self, Error> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {flag:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Self(map))
    }

    fn get(&self, name: &str) -> Result<String, Error> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("missing --{name}").into())
    }

    fn get_or(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    fn num(&self, name: &str, default: usize) -> Result<usize, Error> {
        match self.0.get(name) {
            Some(v) => Ok(v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v:?}"))?),
            None => Ok(default),
        }
    }
}

async fn connect_all(endpoint: &str) -> Result<Vec<Client>, Error> {
    let mut clients = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        clients.push(Client::connect(endpoint.to_owned()).await?);
    }
    Ok(clients)
}

async fn wait(args: &Args) -> Result<(), Error> {
    let endpoint = args.get("endpoint")?;
    let deadline = Instant::now() + Duration::from_secs(args.num("timeout-secs", 30)? as u64);
    loop {
        let attempt = async {
            let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
                .connect()
                .await?;
            let mut health = HealthClient::new(channel);
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner()
                .status();
            Ok::<_, Error>(status == ServingStatus::Serving)
        };
        match attempt.await {
            Ok(true) => return Ok(()),
            Ok(false) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(false) => return Err(format!("{endpoint} is not SERVING").into()),
            Err(err) => return Err(format!("{endpoint} did not answer: {err}").into()),
        }
    }
}

async fn create(args: &Args) -> Result<(), Error> {
    let endpoint = args.get("endpoint")?;
    let management_key = args.get("management-key")?;
    let count = args.num("count", 1000)?;
    let out = args.get("out")?;
    let owner = args.get_or("owner", "acme");
    let scope = args.get_or("scope", "bench:read");
    let concurrency = args.num("concurrency", 32)?.max(1);

    let clients: Vec<Client> = connect_all(&endpoint)
        .await?
        .iter()
        .map(|c| c.with_management_key(&management_key))
        .collect::<Result<_, _>>()?;
    // Where in the key list to begin, so rounds that follow each other
    // can go on where the last one stopped (every key in turn).
    let next = Arc::new(AtomicUsize::new(args.num("offset", 0)?));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut client = clients[worker % clients.len()].clone();
        let next = next.clone();
        let (owner, scope) = (owner.clone(), scope.clone());
        tasks.push(tokio::spawn(async move {
            let mut secrets = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let request = pb::CreateKeyRequest {
                    owner_id: owner.clone(),
                    name: format!("bench-{i}"),
                    environment: "live".to_owned(),
                    scopes: vec![scope.clone()],
                    ..Default::default()
                };
                let response = client
                    .keys
                    .create_key(request)
                    .await
                    .map_err(|s| format!("CreateKey #{i}: {s}"))?
                    .into_inner();
                secrets.push(response.secret);
            }
            Ok::<_, Error>(secrets)
        }));
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let mut written = 0usize;
    for task in tasks {
        for secret in task.await?? {
            writeln!(file, "{secret}")?;
            written += 1;
        }
    }
    file.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "bench_setup: created {written} keys in {secs:.1}s ({:.0} keys/s, {concurrency} in flight)",
        written as f64 / secs
    );
    if written != count {
        return Err(format!("created {written} keys, wanted {count}").into());
    }
    Ok(())
}

/// One seeded key, made by the server's own `issue_key` (what `CreateKey`
/// stores): a fresh secret and credential, a UUIDv7 id, active, version 1.
/// Returns the secret and the key.
fn issue(template: &NewKey, name: String, format: &KeyFormat) -> (String, ApiKey) {
    let new = NewKey {
        name,
        ..template.clone()
    };
    keygate_server::api::management::issue_key(new, format, chrono::Utc::now())
}

async fn seed(args: &Args) -> Result<(), Error> {
    let url = args.get("database-url")?;
    let count = args.num("count", 1000)?;
    let out = args.get("out")?;
    let chunk = args.num("chunk", 10_000)?.max(1);
    let input = NewKeyInput {
        owner_id: args.get_or("owner", "acme"),
        name: "bench-0".to_owned(),
        environment: "live".to_owned(),
        scopes: vec![args.get_or("scope", "bench:read")],
        ..Default::default()
    };
    // The checks CreateKey applies to the request (owner, scopes,
    // environment), once: only the name differs from key to key.
    let template =
        validation::validate_new_key(input, &Environments::default(), chrono::Utc::now())
            .map_err(|e| format!("invalid key template: {e}"))?;
    let format = KeyFormat::default();

    let store = Store::connect(&url).await?;
    // SQLite has one writer at a time: more transactions would only queue.
    let default_concurrency = match store.backend() {
        Backend::Sqlite => 1,
        Backend::Postgres => 2,
    };
    let concurrency = args.num("concurrency", default_concurrency)?.max(1);
    let chunks = count.div_ceil(chunk);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (store, next, done) = (store.clone(), next.clone(), done.clone());
        let (template, format) = (template.clone(), format.clone());
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    break;
                }
                let range = c * chunk..((c + 1) * chunk).min(count);
                // Lookup ids are 8 random base-62 characters: among a million
                // keys, two share one about once in 400 runs. CreateKey
                // would fail that one call; here the whole chunk is rolled
                // back, so make it again.
                let mut attempt = 1;
                let (secrets, keys) = loop {
                    let (secrets, keys): (Vec<String>, Vec<ApiKey>) = range
                        .clone()
                        .map(|i| issue(&template, format!("bench-{i}"), &format))
                        .unzip();
                    match store.insert_keys(&keys).await {
                        Ok(()) => break (secrets, keys),
                        Err(StoreError::Conflict(detail)) if attempt < 3 => {
                            eprintln!(
                                "bench_setup: keys {}..: {detail}; making the chunk again",
                                range.start
                            );
                            attempt += 1;
                        }
                        Err(e) => {
                            return Err(format!("inserting keys {}..: {e}", range.start).into());
                        }
                    }
                };
                let before = done.fetch_add(keys.len(), Ordering::Relaxed);
                let step = 100_000;
                if (before + keys.len()) / step > before / step {
                    eprintln!(
                        "bench_setup: seeded {} of {count} keys ({:.0} keys/s)",
                        before + keys.len(),
                        (before + keys.len()) as f64 / started.elapsed().as_secs_f64()
                    );
                }
                written.push((c, secrets));
            }
            Ok::<_, Error>(written)
        }));
    }
    let mut by_chunk = Vec::with_capacity(chunks);
    for task in tasks {
        by_chunk.extend(task.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    by_chunk.sort_unstable_by_key(|(c, _)| *c);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let mut written = 0usize;
    for secret in by_chunk.iter().flat_map(|(_, secrets)| secrets) {
        writeln!(file, "{secret}")?;
        written += 1;
    }
    file.flush()?;
    eprintln!(
        "bench_setup: seeded {written} keys in {secs:.1}s ({:.0} keys/s, {chunk} per transaction, {concurrency} at a time)",
        written as f64 / secs
    );
    if written != count {
        return Err(format!("seeded {written} keys, wanted {count}").into());
    }
    Ok(())
}

fn read_keys(path: &str) -> Result<Vec<String>, Error> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

async fn authorize(args: &Args) -> Result<(), Error> {
    let endpoint = args.get("endpoint")?;
    let keys = Arc::new(read_keys(&args.get("keys")?)?);
    let scope = args.get_or("scope", "bench:read");
    let client_ip = args.get_or("client-ip", "10.0.0.1");
    let concurrency = args.num("concurrency", 32)?.max(1);

    let clients = connect_all(&endpoint).await?;
    // Where in the key list to begin, so rounds that follow each other
    // can go on where the last one stopped (every key in turn).
    let next = Arc::new(AtomicUsize::new(args.num("offset", 0)?));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut client = clients[worker % clients.len()].clone();
        let (next, keys) = (next.clone(), keys.clone());
        let (scope, client_ip) = (scope.clone(), client_ip.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { break };
                match client
                    .authorize(key, &[scope.as_str()], "live", &client_ip)
                    .await
                {
                    Ok(r) if r.decision() == pb::Decision::Allow => {}
                    Ok(r) => failures.push(format!(
                        "key #{i}: {:?} {:?} {}",
                        r.decision(),
                        r.reason(),
                        r.message
                    )),
                    Err(status) => failures.push(format!("key #{i}: RPC error {status}")),
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        for f in failures.iter().take(10) {
            eprintln!("bench_setup: {f}");
        }
        return Err(format!(
            "{} of {} Authorize calls were not DECISION_ALLOW",
            failures.len(),
            keys.len()
        )
        .into());
    }
    eprintln!(
        "bench_setup: {} Authorize calls, all DECISION_ALLOW, in {secs:.1}s",
        keys.len()
    );
    Ok(())
}

fn data_file(args: &Args) -> Result<(), Error> {
    let keys = read_keys(&args.get("keys")?)?;
    let scope = args.get_or("scope", "bench:read");
    let client_ip = args.get_or("client-ip", "10.0.0.1");
    let ext_authz = match args.get_or("format", "authorize").as_str() {
        "authorize" => false,
        "ext-authz" => true,
        other => {
            return Err(format!("--format must be authorize or ext-authz, got {other}").into());
        }
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(args.get("out")?)?);
    // Keys, scopes and addresses are plain ASCII without quotes or
    // backslashes, so no JSON escaping is needed; refuse anything else.
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    };
    if !plain(&scope) || !plain(&client_ip) {
        return Err("scope and client ip must be plain ASCII".into());
    }
    writeln!(file, "[")?;
    for (i, key) in keys.iter().enumerate() {
        if !plain(key) {
            return Err(format!("key #{i} is not plain ASCII").into());
        }
        let comma = if i + 1 < keys.len() { "," } else { "" };
        if ext_authz {
            // The same question as an Envoy CheckRequest: the key in the
            // authorization header, the scope as the route's context
            // extension, the client as the source address.
            writeln!(
                file,
                r#"{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{client_ip}","portValue":40000}}}}}},"request":{{"http":{{"method":"GET","path":"/bench","headers":{{"authorization":"Bearer {key}"}}}}}},"contextExtensions":{{"keygate_scopes":"{scope}","keygate_environment":"live"}}}}}}{comma}"#
            )?;
        } else {
            writeln!(
                file,
                r#"{{"key":"{key}","required_scopes":["{scope}"],"environment":"live","client_ip":"{client_ip}"}}{comma}"#
            )?;
        }
    }
    writeln!(file, "]")?;
    file.flush()?;
    Ok(())
}

/// A codec that sends bytes as they are and takes answers as bytes, so a
/// call costs the client the same whatever the message.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Whether an encoded answer of `rpc` is an allow (or a serving health
/// check).
fn allowed(rpc: &str, answer: &[u8]) -> Result<bool, Error> {
    use envoy_types::ext_authz::v3::pb::CheckResponse;
    use prost::Message;
    Ok(match rpc {
        "authorize" => pb::AuthorizeResponse::decode(answer)?.decision() == pb::Decision::Allow,
        "ext-authz" => CheckResponse::decode(answer)?
            .status
            .is_some_and(|s| s.code == 0),
        _ => {
            tonic_health::pb::HealthCheckResponse::decode(answer)?.status()
                == ServingStatus::Serving
        }
    })
}

async fn load(args: &Args) -> Result<(), Error> {
    use envoy_types::pb::envoy::{
        config::core::v3::{Address, SocketAddress, address, socket_address},
        service::auth::v3::{AttributeContext, CheckRequest, attribute_context},
    };
    use prost::Message;
    use tonic::codegen::http::uri::PathAndQuery;

    let endpoint = args.get("endpoint")?;
    let rpc = args.get("rpc")?;
    let duration = Duration::from_secs(args.num("duration-secs", 10)? as u64);
    let concurrency = args.num("concurrency", 32)?.max(1);
    let connections = args.num("connections", CHANNELS)?.max(1);
    let scope = args.get_or("scope", "bench:read");
    let client_ip = args.get_or("client-ip", "10.0.0.1");
    let keys = read_keys(&args.get("keys")?)?;
    let (path, requests): (&'static str, Vec<bytes::Bytes>) = match rpc.as_str() {
        "authorize" => (
            "/keygate.v1.AuthorizationService/Authorize",
            keys.iter()
                .map(|key| {
                    pb::AuthorizeRequest {
                        key: key.clone(),
                        required_scopes: vec![scope.clone()],
                        environment: "live".to_owned(),
                        client_ip: client_ip.clone(),
                    }
                    .encode_to_vec()
                    .into()
                })
                .collect(),
        ),
        // The same question as `data-file --format ext-authz` asks.
        "ext-authz" => (
            "/envoy.service.auth.v3.Authorization/Check",
            keys.iter()
                .map(|key| {
                    let check = CheckRequest {
                        attributes: Some(AttributeContext {
                            source: Some(attribute_context::Peer {
                                address: Some(Address {
                                    address: Some(address::Address::SocketAddress(SocketAddress {
                                        address: client_ip.clone(),
                                        port_specifier: Some(
                                            socket_address::PortSpecifier::PortValue(40000),
                                        ),
                                        ..Default::default()
                                    })),
                                }),
                                ..Default::default()
                            }),
                            request: Some(attribute_context::Request {
                                http: Some(attribute_context::HttpRequest {
                                    method: "GET".into(),
                                    path: "/bench".into(),
                                    headers: [(
                                        "authorization".to_owned(),
                                        format!("Bearer {key}"),
                                    )]
                                    .into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            context_extensions: [
                                ("keygate_scopes".to_owned(), scope.clone()),
                                ("keygate_environment".to_owned(), "live".to_owned()),
                            ]
                            .into(),
                            ..Default::default()
                        }),
                    };
                    check.encode_to_vec().into()
                })
                .collect(),
        ),
        "check" => (
            "/grpc.health.v1.Health/Check",
            vec![
                HealthCheckRequest {
                    service: String::new(),
                }
                .encode_to_vec()
                .into(),
            ],
        ),
        other => {
            return Err(format!("--rpc must be authorize, ext-authz or check, got {other}").into());
        }
    };
    if requests.is_empty() {
        return Err("no keys".into());
    }
    let requests = Arc::new(requests);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(
            tonic::transport::Endpoint::from_shared(endpoint.clone())?
                .connect()
                .await?,
        );
    }
    // Where in the key list to begin, so rounds that follow each other
    // can go on where the last one stopped (every key in turn).
    let next = Arc::new(AtomicUsize::new(args.num("offset", 0)?));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut grpc = tonic::client::Grpc::new(channels[worker % connections].clone());
        let (next, requests, rpc) = (next.clone(), requests.clone(), rpc.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let request = requests[i % requests.len()].clone();
                let sent = Instant::now();
                grpc.ready().await?;
                let answer = grpc
                    .unary(
                        tonic::Request::new(request),
                        PathAndQuery::from_static(path),
                        RawCodec,
                    )
                    .await?
                    .into_inner();
                latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                if i % 64 == 0 && !allowed(&rpc, &answer)? {
                    return Err(format!("request #{i} was not allowed").into());
                }
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "calls {} rps {:.0} p50_us {} p99_us {}",
        latencies.len(),
        latencies.len() as f64 / secs,
        percentile(50),
        percentile(99)
    );
    Ok(())
}

/// This process's CPU time (user + system), from `/proc/self/stat`.
fn process_cpu() -> Result<Duration, Error> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').ok_or("unexpected /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

async fn usage_writes(args: &Args) -> Result<(), Error> {
    use keygate_domain::usage::UsageCounts;
    use keygate_persistence::{HourlyUsage, LastUsed};
    use sea_orm::{ConnectionTrait, Statement};

    let store = Store::connect(&args.get("database-url")?).await?;
    let active = args.num("active", 100_000)?;
    let rounds = args.num("rounds", 3)?;
    let backend = store.connection().get_database_backend();
    let rows = store
        .connection()
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            "SELECT key_id, lookup_id FROM credentials ORDER BY random() LIMIT $1",
            [i64::try_from(active)?.into()],
        ))
        .await?;
    let sample: Vec<(String, String)> = rows
        .iter()
        .map(|r| Ok((r.try_get("", "key_id")?, r.try_get("", "lookup_id")?)))
        .collect::<Result<_, sea_orm::DbErr>>()?;
    eprintln!(
        "bench_setup: usage writes for {} keys in use, {rounds} rounds",
        sample.len()
    );
    let start = chrono::Utc::now();
    for round in 0..rounds {
        // A minute apart: every key falls due again, as with the default
        // 60 s precision.
        let at = start + chrono::Duration::seconds(61 * i64::try_from(round)?);
        let uses: Vec<LastUsed> = sample
            .iter()
            .map(|(key_id, lookup_id)| LastUsed {
                key_id: key_id.as_str().into(),
                lookup_id: lookup_id.as_str().into(),
                at,
            })
            .collect();
        let counts: Vec<HourlyUsage> = sample
            .iter()
            .map(|(key_id, _)| HourlyUsage {
                key_id: key_id.as_str().into(),
                hour_start: at.timestamp() - at.timestamp().rem_euclid(3600),
                counts: UsageCounts {
                    allowed: 5,
                    ..Default::default()
                },
            })
            .collect();
        let (cpu, wall) = (process_cpu()?, Instant::now());
        store.record_last_used(&uses).await?;
        let (cpu_used, wall_used) = (process_cpu()? - cpu, wall.elapsed());
        let (cpu, wall) = (process_cpu()?, Instant::now());
        store.add_usage_counts(&counts).await?;
        let (cpu_counts, wall_counts) = (process_cpu()? - cpu, wall.elapsed());
        let per_key = |d: Duration| d.as_secs_f64() * 1e6 / sample.len().max(1) as f64;
        eprintln!(
            "bench_setup: round {}: last used {:.0} ms wall, {:.0} ms CPU ({:.1} µs/key); \
             hourly counts {:.0} ms wall, {:.0} ms CPU ({:.1} µs/key)",
            round + 1,
            wall_used.as_secs_f64() * 1e3,
            cpu_used.as_secs_f64() * 1e3,
            per_key(cpu_used),
            wall_counts.as_secs_f64() * 1e3,
            cpu_counts.as_secs_f64() * 1e3,
            per_key(cpu_counts),
        );
    }
    Ok(())
}

/// The usage flushers of a server, driven through `UsageRecorder` itself:
/// `--active` keys of the database (a random sample) each used once per
/// round, rounds a simulated minute apart, so every round's count flush
/// carries every key's hourly counts and, as in a server under steady use,
/// a last use due under the 60 s precision. Round 1 is the keys' first use
/// (the 5 s last-used flush, then the count flush). Prints the wall time
/// and this process's CPU time per key of each flush (on SQLite the
/// database's work is in this process).
async fn usage_flush(args: &Args) -> Result<(), Error> {
    use keygate_domain::usage::UseOutcome;
    use keygate_server::hotpath::{runtime::Runtimes, usage::UsageRecorder};
    use sea_orm::{ConnectionTrait, Statement};

    let store = Store::connect(&args.get("database-url")?).await?;
    let active = args.num("active", 100_000)?;
    let rounds = args.num("rounds", 3)?;
    let backend = store.connection().get_database_backend();
    let rows = store
        .connection()
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            "SELECT key_id, lookup_id FROM credentials ORDER BY random() LIMIT $1",
            [i64::try_from(active)?.into()],
        ))
        .await?;
    let runtimes = Runtimes::default();
    let sample = rows
        .iter()
        .map(|r| {
            let key_id: String = r.try_get("", "key_id")?;
            let lookup_id: String = r.try_get("", "lookup_id")?;
            let lookup: [u8; 8] = lookup_id
                .as_bytes()
                .try_into()
                .map_err(|_| format!("lookup id {lookup_id:?} is not 8 bytes"))?;
            Ok((runtimes.get_or_create(&key_id), lookup))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let precision = args.num("precision-secs", 60)?;
    let recorder = UsageRecorder::new(Duration::from_secs(precision as u64));
    eprintln!(
        "bench_setup: usage flushes for {} keys in use, {rounds} rounds",
        sample.len()
    );
    let per_key = |d: Duration| d.as_secs_f64() * 1e6 / sample.len().max(1) as f64;
    let measure = |name: &'static str, cpu: Duration, wall: Instant, rows: usize| {
        let cpu = process_cpu().map(|now| now - cpu).unwrap_or_default();
        format!(
            "{name} {rows} rows, {:.0} ms wall, {:.0} ms CPU ({:.2} µs/key)",
            wall.elapsed().as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            per_key(cpu)
        )
    };
    // Early in an hour, so the rounds share one hourly row per key.
    let now = chrono::Utc::now().timestamp();
    let start = chrono::DateTime::from_timestamp(now - now.rem_euclid(3600) + 1, 0)
        .ok_or("time out of range")?;
    for round in 0..rounds {
        let at = start + chrono::Duration::seconds(61 * i64::try_from(round)?);
        for (runtime, lookup) in &sample {
            recorder.record(runtime, *lookup, at, UseOutcome::Allowed);
        }
        let mut line = format!("bench_setup: round {}:", round + 1);
        if round == 0 {
            let (cpu, wall) = (process_cpu()?, Instant::now());
            let n = recorder.flush_last_used(&store).await?;
            line += &format!(" first uses: {};", measure("last used", cpu, wall, n));
        }
        let (cpu, wall) = (process_cpu()?, Instant::now());
        let n = recorder.flush_counts(&store).await?;
        line += &format!(" count flush: {}", measure("key-hours", cpu, wall, n));
        eprintln!("{line}");
    }
    Ok(())
}

/// The server's allocator, so `seed`, `usage-writes` and `usage-flush`
/// (whose database work, on SQLite, runs in this process) allocate as the
/// server does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let result = match raw.split_first() {
        Some((command, rest)) => match Args::parse(rest) {
            Ok(args) => match command.as_str() {
                "wait" => wait(&args).await,
                "create" => create(&args).await,
                "seed" => seed(&args).await,
                "authorize" => authorize(&args).await,
                "data-file" => data_file(&args),
                "usage-writes" => usage_writes(&args).await,
                "usage-flush" => usage_flush(&args).await,
                "load" => load(&args).await,
                other => Err(format!("unknown command {other:?}").into()),
            },
            Err(err) => Err(err),
        },
        None => {
            Err("usage: bench_setup wait|create|seed|authorize|data-file --flag value …".into())
        }
    };
    if let Err(err) = result {
        eprintln!("bench_setup: error: {err}");
        std::process::exit(1);
    }
}
