//! Process logging (spec connectivity §6.6): one JSON object per line by default, a level
//! that can change while the process runs, and the cluster id on every line once known.
//!
//! JSON lines carry `ts` (RFC 3339, UTC, milliseconds), `level`, `msg`, `logger` (the
//! module), `operator_version`, `cluster_id` (after credentials are loaded), the event's
//! own fields (`job_id`, `error`, …) and the fields of the enclosing spans; inside a
//! reconcile: `controller`, `object`, `reconcileID`, `namespace` and one of
//! `application_instance` / `operation` / `cluster`. Span fields are kept as tracing-subscriber's JSON field
//! formatter stores them and merged here, so nested spans need no bespoke layer.
//!
//! Runtime level change: [`LogControl::set_level`] swaps the filter through
//! tracing-subscriber's `reload` layer. main.rs calls it on `SIGHUP` and whenever the
//! `--log-level-file` content changes (a mounted ConfigMap updates in place), so no
//! restart and no shell in the container are needed.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;

/// Noisy dependencies stay at `warn` whatever the operator's level.
const DEPENDENCIES: &str = "kube=warn,hyper=warn,hyper_util=warn,tower=warn,rustls=warn";

/// Cluster id stamped on every JSON line once the agent knows it.
static CLUSTER_ID: RwLock<Option<String>> = RwLock::new(None);

/// Records the cluster id the agent serves (`None` when it has none).
pub fn set_cluster_id(id: Option<&str>) {
    if let Ok(mut c) = CLUSTER_ID.write() {
        let id = id.filter(|s| !s.is_empty()).map(str::to_string);
        if *c != id {
            *c = id;
        }
    }
}

fn cluster_id() -> Option<String> {
    CLUSTER_ID.read().ok().and_then(|c| c.clone())
}

/// `--zap-encoder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoder {
    Json,
    Console,
}

impl std::str::FromStr for Encoder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "json" => Ok(Encoder::Json),
            "console" => Ok(Encoder::Console),
            other => Err(format!(
                "unknown log encoder {other:?}: use json or console"
            )),
        }
    }
}

/// The operator's own level from a `--zap-log-level` value: `debug`, `info`, `warn`,
/// `error`, or zap's integers (`-1` debug … `2` error; below `-1` is trace).
pub fn parse_level(level: &str) -> Result<&'static str, String> {
    let l = level.trim().to_ascii_lowercase();
    Ok(match l.as_str() {
        "trace" => "trace",
        "-1" | "debug" => "debug",
        "0" | "info" => "info",
        "1" | "warn" | "warning" => "warn",
        "2" | "error" | "dpanic" | "panic" | "fatal" => "error",
        other if other.parse::<i32>().is_ok_and(|n| n < -1) => "trace",
        other if other.parse::<i32>().is_ok_and(|n| n > 2) => "error",
        other => {
            return Err(format!(
                "unknown log level {other:?}: use debug, info, warn, error or an integer"
            ));
        }
    })
}

/// The filter for `level`; dependencies stay at `warn`.
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    let level = parse_level(level)?;
    EnvFilter::try_new(format!("{level},{DEPENDENCIES}")).map_err(|e| e.to_string())
}

type Handle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Changes the level of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: Handle,
    level: Arc<Mutex<String>>,
}

impl fmt::Debug for LogControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogControl")
            .field("level", &self.level())
            .finish()
    }
}

impl LogControl {
    /// The level in effect (as given, normalised by [`parse_level`]).
    pub fn level(&self) -> String {
        self.level.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Applies `level`; an unknown value is refused and the old level stays.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let name = parse_level(level)?;
        let old = self.level();
        if old == name {
            return Ok(());
        }
        // Said before the change, so the line is visible even when the new level hides
        // info lines.
        tracing::info!(from = %old, to = %name, "log level changing");
        self.handle
            .reload(filter(name)?)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        if let Ok(mut l) = self.level.lock() {
            *l = name.to_string();
        }
        // Not `level`: that key is the line's own level.
        tracing::info!(log_level = %name, "log level changed");
        Ok(())
    }

    /// Reads a level from `path` (first non-empty line, `#` comments allowed) and applies
    /// it. A missing or empty file changes nothing.
    pub fn apply_file(&self, path: &Path) -> Result<bool, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let Some(line) = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
        else {
            return Ok(false);
        };
        let before = self.level();
        self.set_level(line)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(self.level() != before)
    }
}

/// Builds the subscriber for `level`/`encoder`, writing to `writer`. Returned rather than
/// installed so tests can run it with `tracing::subscriber::with_default`.
pub fn subscriber<W>(
    level: &str,
    encoder: Encoder,
    writer: W,
) -> Result<(Box<dyn Subscriber + Send + Sync>, LogControl), String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let name = parse_level(level)?;
    let (layer, handle) = reload::Layer::new(filter(name)?);
    let registry = tracing_subscriber::registry()
        .with(layer)
        .with(ReconcileIds);
    let subscriber: Box<dyn Subscriber + Send + Sync> = match encoder {
        Encoder::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines)
                    .with_writer(writer),
            ),
        ),
        Encoder::Console => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer),
            ),
        ),
    };
    Ok((
        subscriber,
        LogControl {
            handle,
            level: Arc::new(Mutex::new(name.to_string())),
        },
    ))
}

/// Installs the process logger on stderr. `RUST_LOG`, when set, replaces the initial
/// filter (debugging aid); runtime changes still apply.
pub fn init(level: &str, encoder: Encoder) -> Result<LogControl, String> {
    let (subscriber, control) = subscriber(level, encoder, io::stderr)?;
    if let Ok(env) = std::env::var("RUST_LOG")
        && let Ok(f) = EnvFilter::try_new(&env)
        && control.handle.reload(f).is_ok()
        && let Ok(mut l) = control.level.lock()
    {
        // Not a level name, so any level later read from the file applies.
        *l = "RUST_LOG".into();
    }
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| format!("a logger is already installed: {e}"))?;
    Ok(control)
}

/// Re-reads `file` on `SIGHUP` and every `every` (a mounted ConfigMap changes in place),
/// until `cancel`.
pub async fn watch_level(
    control: LogControl,
    file: PathBuf,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_error = String::new();
    loop {
        match control.apply_file(&file) {
            Ok(_) => last_error.clear(),
            // Said once per distinct problem, not every tick.
            Err(e) if e != last_error => {
                tracing::error!(error = %e, "log level file ignored");
                last_error = e;
            }
            Err(_) => {}
        }
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
            _ = hangup => tracing::info!(file = %file.display(), "SIGHUP: re-reading the log level"),
        }
    }
}

/// Gives every `reconcile` span a `reconcileID` (as controller-runtime does), so the lines
/// of one pass can be grepped together.
struct ReconcileIds;

/// Stored in a reconcile span's extensions.
struct ReconcileId(String);

impl<S> tracing_subscriber::Layer<S> for ReconcileIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "reconcile"
            && let Some(span) = ctx.span(id)
        {
            let rid = format!("{:016x}", fastrand::u64(..));
            span.extensions_mut().insert(ReconcileId(rid));
        }
    }
}

/// The reconcile span's `object` (`Kind/namespace/name`) as the documented fields:
/// `namespace` plus `application_instance`, `operation` or `cluster`.
fn object_fields(object: &str, line: &mut Map<String, Value>) {
    let mut parts = object.splitn(3, '/');
    let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let key = match kind {
        "ApplicationInstance" => "application_instance",
        "Operation" => "operation",
        "Cluster" => "cluster",
        _ => return,
    };
    if !ns.is_empty() {
        line.insert("namespace".into(), ns.into());
    }
    line.insert(key.into(), name.into());
}

/// The JSON line format of spec §6.6.
struct JsonLines;

/// Collects an event's fields into a JSON map; `message` becomes `msg`.
struct Fields<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, value.into());
    }
}

impl Fields<'_> {
    fn insert(&mut self, field: &Field, value: Value) {
        let key = match field.name() {
            "message" => "msg",
            other => other,
        };
        self.0.insert(key.to_string(), value);
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "ts".into(),
            jiff::Timestamp::now()
                .round(jiff::Unit::Millisecond)
                .map(|t| t.to_string())
                .unwrap_or_default()
                .into(),
        );
        line.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("msg".into(), Value::String(String::new()));
        line.insert("logger".into(), meta.target().into());
        line.insert("operator_version".into(), env!("CARGO_PKG_VERSION").into());
        if let Some(id) = cluster_id() {
            line.insert("cluster_id".into(), id.into());
        }
        // Outer spans first so an inner span's field wins, and the event's over both.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    if let Some(object) = map.get("object").and_then(Value::as_str) {
                        object_fields(object, &mut line);
                    }
                    line.extend(map);
                }
                if let Some(ReconcileId(rid)) = ext.get::<ReconcileId>() {
                    line.insert("reconcileID".into(), rid.clone().into());
                }
            }
        }
        event.record(&mut Fields(&mut line));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    #[test]
    fn json_lines_carry_the_documented_fields() {
        let buf = Buffer::default();
        let (sub, _control) = subscriber("info", Encoder::Json, buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            for _ in 0..2 {
                let span = tracing::info_span!(
                    "reconcile",
                    controller = "operation",
                    object = "Operation/org-a/backup-1"
                );
                let _g = span.enter();
                tracing::info!(job_id = "j-1", attempt = 2u64, "job applied");
                tracing::debug!("hidden at info");
            }
            let cluster = tracing::info_span!("reconcile", object = "Cluster//this-cluster");
            let _g = cluster.enter();
            tracing::warn!("heartbeat failed");
        });
        let lines = buf.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        // Each pass has its own reconcile id.
        let rid = |l: &Value| l["reconcileID"].as_str().unwrap().to_string();
        assert_eq!(rid(&lines[0]).len(), 16);
        assert_ne!(rid(&lines[0]), rid(&lines[1]));
        assert_eq!(lines[0]["namespace"], "org-a");
        assert_eq!(lines[0]["operation"], "backup-1");
        assert_eq!(lines[2]["cluster"], "this-cluster");
        assert!(lines[2].get("namespace").is_none(), "{}", lines[2]);
        assert_eq!(lines[2]["level"], "warn");
        let l = &lines[0];
        assert_eq!(l["level"], "info");
        assert_eq!(l["msg"], "job applied");
        assert_eq!(l["job_id"], "j-1");
        assert_eq!(l["attempt"], 2);
        assert_eq!(l["controller"], "operation");
        assert_eq!(l["object"], "Operation/org-a/backup-1");
        assert_eq!(l["operator_version"], env!("CARGO_PKG_VERSION"));
        assert!(l["logger"].as_str().unwrap().contains("logging"));
        let ts: jiff::Timestamp = l["ts"].as_str().unwrap().parse().unwrap();
        assert!((jiff::Timestamp::now() - ts).get_seconds().abs() < 60);
    }

    #[test]
    fn the_cluster_id_is_stamped_once_known() {
        let buf = Buffer::default();
        let (sub, _control) = subscriber("info", Encoder::Json, buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            set_cluster_id(Some("5b0f7c1e-0000-4000-8000-000000000001"));
            tracing::info!("with id");
            set_cluster_id(None);
            tracing::info!("without id");
        });
        let lines = buf.lines();
        assert_eq!(
            lines[0]["cluster_id"],
            "5b0f7c1e-0000-4000-8000-000000000001"
        );
        assert!(lines[1].get("cluster_id").is_none());
    }

    #[test]
    fn the_level_changes_at_runtime_and_bad_levels_are_refused() {
        let buf = Buffer::default();
        let (sub, control) = subscriber("info", Encoder::Json, buf.clone()).unwrap();
        let dir = std::env::temp_dir().join(format!("vws-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("level");
        tracing::subscriber::with_default(sub, || {
            tracing::debug!("one");
            control.set_level("debug").unwrap();
            tracing::debug!("two");
            // zap's integers, as the flag accepts them.
            control.set_level("2").unwrap();
            tracing::warn!("three");
            tracing::error!("four");
            assert!(control.set_level("loud").is_err());
            assert_eq!(control.level(), "error");
            // From a file, as a mounted ConfigMap provides it.
            assert!(!control.apply_file(&dir.join("missing")).unwrap());
            std::fs::write(&file, "# operator log level\n\nwarn\n").unwrap();
            assert!(control.apply_file(&file).unwrap());
            assert!(!control.apply_file(&file).unwrap(), "unchanged content");
            tracing::warn!("five");
            tracing::info!("six");
            std::fs::write(&file, "verbose\n").unwrap();
            assert!(control.apply_file(&file).unwrap_err().contains("verbose"));
            assert_eq!(control.level(), "warn");
        });
        let msgs: Vec<String> = buf
            .lines()
            .iter()
            .filter(|l| !l["msg"].as_str().unwrap().starts_with("log level"))
            .map(|l| l["msg"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(msgs, ["two", "four", "five"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn levels_and_encoders_parse() {
        assert_eq!(parse_level("-1"), Ok("debug"));
        assert_eq!(parse_level("-3"), Ok("trace"));
        assert_eq!(parse_level("INFO"), Ok("info"));
        assert_eq!(parse_level("5"), Ok("error"));
        assert!(parse_level("").is_err());
        assert_eq!("json".parse(), Ok(Encoder::Json));
        assert_eq!("console".parse(), Ok(Encoder::Console));
        assert!("logfmt".parse::<Encoder>().is_err());
    }
}
