//! A controller's trigger from a reflected watch, safe across re-lists.
//!
//! The reflector store takes a list's objects in only when the list is complete
//! (`InitDone`), while `applied_objects()` passes each listed object on as soon as it
//! arrives. After an apiserver restart (or any `410`) with more objects than one list
//! page, the controller is then asked to reconcile objects the store does not hold yet:
//! kube's `Controller` drops those requests ("not found in local store") and nothing asks
//! again, so objects created while the watch was down are never reconciled. Holding a
//! list's objects back until `InitDone` (when the store has them) closes that race.

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{Error, Event};

/// The applied objects of `events` (`.reflect(writer)` already applied), with those of a
/// (re-)list yielded only once the list is complete. Deletions are dropped, as
/// `applied_objects()` does; errors pass through.
pub fn applied_after_list<K, S>(events: S) -> impl Stream<Item = Result<K, Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, Error>> + Send,
{
    events
        .scan(Vec::new(), |held: &mut Vec<K>, event| {
            let out: Vec<Result<K, Error>> = match event {
                Ok(Event::Apply(o)) => vec![Ok(o)],
                Ok(Event::Init) => {
                    // A list started over: what an unfinished one held is listed again.
                    held.clear();
                    Vec::new()
                }
                Ok(Event::InitApply(o)) => {
                    held.push(o);
                    Vec::new()
                }
                Ok(Event::InitDone) => std::mem::take(held).into_iter().map(Ok).collect(),
                Ok(Event::Delete(_)) => Vec::new(),
                Err(e) => vec![Err(e)],
            };
            futures::future::ready(Some(futures::stream::iter(out)))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(events: Vec<Result<Event<String>, Error>>) -> Vec<String> {
        let out = futures::executor::block_on(
            applied_after_list(futures::stream::iter(events)).collect::<Vec<_>>(),
        );
        out.into_iter()
            .map(|r| r.unwrap_or_else(|e| format!("error: {e}")))
            .collect()
    }

    #[test]
    fn a_lists_objects_come_after_it_completes() {
        let s = |n: &str| n.to_string();
        let got = names(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(s("a"))),
            Ok(Event::InitApply(s("b"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(s("c"))),
            Ok(Event::Delete(s("a"))),
            // A re-list cut short (an error, then a new list): only the new list counts.
            Ok(Event::Init),
            Ok(Event::InitApply(s("stale"))),
            Err(Error::NoResourceVersion),
            Ok(Event::Init),
            Ok(Event::InitApply(s("d"))),
            Ok(Event::InitDone),
        ]);
        assert_eq!(
            got,
            [
                "a",
                "b",
                "c",
                &format!("error: {}", Error::NoResourceVersion),
                "d"
            ]
        );
    }

    #[test]
    fn nothing_is_yielded_before_init_done() {
        let got = names(vec![Ok(Event::Init), Ok(Event::InitApply("a".to_string()))]);
        assert!(got.is_empty(), "{got:?}");
    }
}
