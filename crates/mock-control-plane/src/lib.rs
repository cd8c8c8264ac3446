//! A mock of the vWorkspace control plane's agent API, strict where the real server is
//! strict, so client bugs show up in tests: registration tokens are single use and expire,
//! bad bearer tokens get `401`, a token of another cluster `403`, unknown jobs `404`,
//! unacknowledged jobs are handed out again after a lease, rotated tokens keep working for
//! a grace period, and faults (status codes, `Retry-After`, delays, dropped connections)
//! can be injected per endpoint through the admin API. State lives in SQLite, so a
//! restart with the same database loses nothing.

mod admin;
mod capture;
mod faults;
mod server;
mod store;

pub use admin::AdminClient;
pub use capture::CapturedRequest;
pub use faults::Fault;
pub use server::{MockConfig, MockServer, router};
pub use store::{JobInfo, JobState};

/// Header carrying the admin token on `/api/admin/*`.
pub const ADMIN_HEADER: &str = "X-Mock-Control-Plane-Admin-Token";
