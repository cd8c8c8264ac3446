//! Job-by-job decoding of a `GET /api/agent/jobs` answer (docs/protocol.md "Limits").
//!
//! The answer is split into its jobs by a byte scanner before anything is decoded, so
//! one job that cannot be read — nested too deep, invalid UTF-8, a field of the wrong
//! type, too large — never hides the jobs beside it. The scanner keeps no recursion
//! (depth is a counter) and never looks inside strings beyond their escapes, so hostile
//! input costs time linear in its length and no stack.
//!
//! Each job comes out as a [`Entry::Job`] or an [`Entry::Malformed`] that carries the
//! job's id when its top-level `"id"` is a readable non-empty string (the agent then
//! answers it `failed` with the problem) and the problem in words.

use crate::Job;

/// Largest accepted poll answer. The agent stops reading there; jobs after the cut are
/// not acknowledged and come again on a later poll.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Largest accepted job (its JSON text). The in-flight journal keeps accepted jobs in
/// one Secret (1 MiB), so a job must leave room for a few others.
pub const MAX_JOB_BYTES: usize = 256 * 1024;
/// Deepest accepted nesting of arrays and objects inside one job (the job object is 1).
pub const MAX_JOB_DEPTH: usize = 64;

/// Error code in the `failed` result of a job over [`MAX_JOB_BYTES`].
pub const JOB_TOO_LARGE: &str = "JobTooLarge";
/// Error code in the `failed` result of a job nested deeper than [`MAX_JOB_DEPTH`].
pub const JOB_TOO_DEEP: &str = "JobTooDeep";
/// Error code in the `failed` result of a job that does not decode.
pub const JOB_MALFORMED: &str = "JobMalformed";

/// One job of a poll answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Job(Box<Job>),
    /// Could not be read. `id` is set when the job's id could still be read.
    Malformed {
        id: Option<String>,
        problem: String,
    },
}

/// The jobs of a poll answer, in server order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The answer was cut at [`MAX_RESPONSE_BYTES`]: jobs after the cut are missing.
    pub truncated: bool,
}

/// Why the answer as a whole could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("jobs answer is not a JSON object with a jobs array: {0}")]
pub struct BatchError(String);

#[derive(Debug)]
enum Stop {
    /// The input ended inside a value.
    End,
    Invalid(&'static str),
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Result<u8, Stop> {
        self.ws();
        self.b.get(self.i).copied().ok_or(Stop::End)
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), Stop> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Stop::Invalid(what))
        }
    }

    /// At `"`: moves past the closing quote; returns the raw text between the quotes.
    fn string(&mut self) -> Result<&'a [u8], Stop> {
        self.expect(b'"', "expected a string")?;
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Ok(&self.b[start..self.i - 1]);
                }
                _ => self.i += 1,
            }
        }
        Err(Stop::End)
    }

    /// Moves past one value; returns its deepest nesting (a scalar is 0). Structure is
    /// only checked loosely: the value is decoded properly afterwards.
    fn value(&mut self) -> Result<usize, Stop> {
        let (mut depth, mut deepest) = (0usize, 0usize);
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    self.i += 1;
                    depth += 1;
                    deepest = deepest.max(depth);
                    continue;
                }
                b'}' | b']' => {
                    if depth == 0 {
                        return Err(Stop::Invalid("unbalanced brackets"));
                    }
                    self.i += 1;
                    depth -= 1;
                }
                b',' | b':' if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                b',' | b':' => return Err(Stop::Invalid("expected a value")),
                _ => {
                    let start = self.i;
                    while self.i < self.b.len()
                        && !matches!(
                            self.b[self.i],
                            b',' | b']' | b'}' | b':' | b'"' | b' ' | b'\t' | b'\r' | b'\n'
                        )
                    {
                        self.i += 1;
                    }
                    if self.i == self.b.len() && depth == 0 {
                        // A scalar at the very end may be cut short.
                        return Err(Stop::End);
                    }
                    if self.i == start {
                        return Err(Stop::Invalid("expected a value"));
                    }
                }
            }
            if depth == 0 {
                return Ok(deepest);
            }
        }
    }
}

/// The job's id, when its top-level `"id"` member is a readable non-empty string. Works
/// on a cut-off job too, as long as the id comes before the cut.
pub fn job_id(raw: &[u8]) -> Option<String> {
    let mut s = Scan { b: raw, i: 0 };
    s.expect(b'{', "").ok()?;
    loop {
        if s.peek().ok()? == b'}' {
            return None;
        }
        let key = s.string().ok()?;
        s.expect(b':', "").ok()?;
        if key == b"id" {
            s.ws();
            let value_start = s.i;
            if s.peek().ok()? != b'"' {
                return None;
            }
            s.string().ok()?;
            let id: String = serde_json::from_slice(&raw[value_start..s.i]).ok()?;
            return Some(id).filter(|i| !i.trim().is_empty());
        }
        s.value().ok()?;
        match s.peek().ok()? {
            b',' => s.i += 1,
            _ => return None,
        }
    }
}

fn too_large(raw: &[u8], size: String) -> Entry {
    Entry::Malformed {
        id: job_id(raw),
        problem: format!(
            "{JOB_TOO_LARGE}: the job is {size} bytes, over the agent's limit of {MAX_JOB_BYTES} bytes"
        ),
    }
}

fn entry(raw: &[u8], depth: usize) -> Entry {
    if raw.len() > MAX_JOB_BYTES {
        return too_large(raw, raw.len().to_string());
    }
    if depth > MAX_JOB_DEPTH {
        return Entry::Malformed {
            id: job_id(raw),
            problem: format!(
                "{JOB_TOO_DEEP}: the job nests deeper than the agent's limit of {MAX_JOB_DEPTH} levels"
            ),
        };
    }
    match serde_json::from_slice::<Job>(raw) {
        Ok(job) if job.id.trim().is_empty() => Entry::Malformed {
            id: None,
            problem: format!("{JOB_MALFORMED}: the job has an empty id"),
        },
        Ok(job) => Entry::Job(Box::new(job)),
        Err(e) => Entry::Malformed {
            id: job_id(raw),
            problem: format!("{JOB_MALFORMED}: {e}"),
        },
    }
}

/// Splits a poll answer into its jobs. `complete` is false when the body was cut at
/// [`MAX_RESPONSE_BYTES`]: a job cut short is then reported only when it is already over
/// [`MAX_JOB_BYTES`] (it could never be accepted); otherwise it is left for a later poll.
/// A blank body is an empty batch (`jobs: null` and a missing `jobs` too).
pub fn split_jobs(body: &[u8], complete: bool) -> Result<Batch, BatchError> {
    let mut batch = Batch::default();
    let mut s = Scan { b: body, i: 0 };
    let invalid = |why: &str| BatchError(why.to_string());
    match s.peek() {
        Err(Stop::End) if complete => return Ok(batch),
        Err(_) => return Err(invalid("empty answer cut short")),
        Ok(_) => {}
    }
    let fail = |stop: Stop| match stop {
        Stop::End => invalid("the answer ends early"),
        Stop::Invalid(w) => invalid(w),
    };
    s.expect(b'{', "expected an object").map_err(fail)?;
    loop {
        if s.peek().map_err(fail)? == b'}' {
            return Ok(batch);
        }
        let key = s.string().map_err(fail)?;
        s.expect(b':', "expected ':'").map_err(fail)?;
        if key != b"jobs" || s.peek().map_err(fail)? == b'n' {
            s.value().map_err(fail)?;
        } else {
            s.expect(b'[', "jobs is not an array").map_err(fail)?;
            loop {
                match s.peek() {
                    Ok(b']') => {
                        s.i += 1;
                        break;
                    }
                    Ok(_) => {}
                    Err(Stop::End) if !complete => {
                        batch.truncated = true;
                        return Ok(batch);
                    }
                    Err(e) => return Err(fail(e)),
                }
                let start = s.i;
                match s.value() {
                    Ok(depth) => batch.entries.push(entry(&body[start..s.i], depth)),
                    Err(Stop::End) if !complete => {
                        batch.truncated = true;
                        let raw = &body[start..];
                        if raw.len() > MAX_JOB_BYTES {
                            batch
                                .entries
                                .push(too_large(raw, format!("more than {}", raw.len())));
                        }
                        return Ok(batch);
                    }
                    Err(e) => return Err(fail(e)),
                }
                match s.peek() {
                    Ok(b',') => s.i += 1,
                    Ok(b']') => {}
                    Ok(_) => return Err(invalid("expected ',' or ']' between jobs")),
                    Err(Stop::End) if !complete => {
                        batch.truncated = true;
                        return Ok(batch);
                    }
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        match s.peek() {
            Ok(b',') => s.i += 1,
            Ok(b'}') => {}
            Ok(_) => return Err(invalid("expected ',' or '}'")),
            Err(Stop::End) if !complete => {
                batch.truncated = true;
                return Ok(batch);
            }
            Err(e) => return Err(fail(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(b: &Batch) -> Vec<String> {
        b.entries
            .iter()
            .map(|e| match e {
                Entry::Job(j) => format!("ok:{}", j.id),
                Entry::Malformed { id, problem } => {
                    format!(
                        "bad:{}:{}",
                        id.as_deref().unwrap_or("-"),
                        problem.split(':').next().unwrap()
                    )
                }
            })
            .collect()
    }

    fn good(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","kind":"apply","payload":{{"a":[1,2,{{"b":null}}]}},"idempotencyKey":"k-{id}"}}"#
        )
    }

    #[test]
    fn one_bad_job_never_hides_its_neighbours() {
        let deep = format!(
            r#"{{"id":"deep","kind":"apply","payload":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let mut body = format!(
            r#"{{"jobs":[{},{},{},{},{},"#,
            good("a"),
            deep,
            r#"{"id":"k42","kind":42,"payload":{}}"#,
            r#"{"id":7,"kind":"apply","payload":{}}"#,
            r#"{"kind":"apply","payload":{}}"#,
        )
        .into_bytes();
        // Invalid UTF-8 inside a string of the payload.
        body.extend_from_slice(br#"{"id":"utf","kind":"apply","payload":{"x":""#);
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#""}},"#);
        body.extend_from_slice(good("z").as_bytes());
        body.extend_from_slice(br#"],"extra":{"x":[1]}}"#);
        let b = split_jobs(&body, true).unwrap();
        assert_eq!(
            ids(&b),
            [
                "ok:a",
                "bad:deep:JobTooDeep",
                "bad:k42:JobMalformed",
                "bad:-:JobMalformed",
                "bad:-:JobMalformed",
                "bad:utf:JobMalformed",
                "ok:z"
            ]
        );
        assert!(!b.truncated);
        let Entry::Malformed { problem, .. } = &b.entries[2] else {
            panic!()
        };
        assert!(problem.contains("integer `42`"), "{problem}");
    }

    #[test]
    fn oversized_jobs_are_named_with_the_limit() {
        let big = format!(
            r#"{{"id":"big","kind":"apply","payload":{{"blob":"{}"}}}}"#,
            "x".repeat(MAX_JOB_BYTES)
        );
        let body = format!(r#"{{"jobs":[{big},{}]}}"#, good("after"));
        let b = split_jobs(body.as_bytes(), true).unwrap();
        assert_eq!(ids(&b), ["bad:big:JobTooLarge", "ok:after"]);
        let Entry::Malformed { problem, .. } = &b.entries[0] else {
            panic!()
        };
        assert!(problem.contains(&MAX_JOB_BYTES.to_string()), "{problem}");

        // Cut off inside the big job: still answered; the cut job after it is not.
        let cut = &body.as_bytes()[..MAX_JOB_BYTES + 100];
        let b = split_jobs(cut, false).unwrap();
        assert_eq!(ids(&b), ["bad:big:JobTooLarge"]);
        assert!(b.truncated);
        let cut = &body.as_bytes()[..body.len() - 10];
        let b = split_jobs(cut, false).unwrap();
        assert_eq!(ids(&b), ["bad:big:JobTooLarge"]);
        assert!(b.truncated);
    }

    #[test]
    fn empty_and_odd_answers() {
        assert_eq!(split_jobs(b"  ", true).unwrap(), Batch::default());
        assert!(
            split_jobs(br#"{"jobs":null}"#, true)
                .unwrap()
                .entries
                .is_empty()
        );
        assert!(split_jobs(br#"{}"#, true).unwrap().entries.is_empty());
        assert!(
            split_jobs(br#"{"jobs":[]}"#, true)
                .unwrap()
                .entries
                .is_empty()
        );
        assert!(split_jobs(br#"[1]"#, true).is_err());
        assert!(split_jobs(br#"{"jobs":[{"id":"a"}"#, true).is_err());
        assert!(split_jobs(br#"{"jobs":[1 2]}"#, true).is_err());
        assert!(split_jobs(br#"{"jobs":"x"}"#, true).is_err());
        assert_eq!(
            ids(&split_jobs(br#"{"jobs":[1,"s",{"id":"q","kind":"apply"}]}"#, true).unwrap()),
            ["bad:-:JobMalformed", "bad:-:JobMalformed", "ok:q"]
        );
    }

    #[test]
    fn ids_are_read_from_the_top_level_only() {
        assert_eq!(
            job_id(br#"{"payload":{"id":"inner"},"id":"outer"}"#).as_deref(),
            Some("outer")
        );
        assert_eq!(job_id(br#"{"id":"a\"b"}"#).as_deref(), Some("a\"b"));
        assert_eq!(job_id(br#"{"id":42}"#), None);
        assert_eq!(job_id(br#"{"id":"  "}"#), None);
        assert_eq!(job_id(b"{\"id\":\"\xff\"}"), None);
        assert_eq!(
            job_id(br#"{"id":"cut","payload":{"x":"#).as_deref(),
            Some("cut")
        );
    }
}
