//! The agent HTTP client's reactions to every status code (spec §2.11), against a
//! scripted in-test server; credential reloads read a real Secret on the apiserver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use testkit::fixtures::{TestNamespace, test_namespace};
use vworkspace_operator::agent::client::{AgentClient, ClientError, Delivery};
use vworkspace_operator::agent::connectivity::Windows;
use vworkspace_operator::agent::credentials::{CredentialStore, SecretLocation};
use vworkspace_operator::agent::wire::{JobResult, OUTCOME_NOOP};
use vworkspace_operator::metrics::Metrics;

/// Scripted answers: (status, Retry-After, body); records the bearer of every request.
#[derive(Default)]
struct Script {
    answers: VecDeque<(u16, Option<String>, String)>,
    bearers: Vec<String>,
}

type S = Arc<Mutex<Script>>;

async fn any(axum::extract::State(s): axum::extract::State<S>, h: HeaderMap) -> Response {
    let mut s = s.lock().unwrap();
    s.bearers.push(
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    );
    let (code, retry, body) =
        s.answers
            .pop_front()
            .unwrap_or((200, None, r#"{"jobs":null}"#.into()));
    let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
    if let Some(v) = retry {
        r.headers_mut().insert("retry-after", v.parse().unwrap());
    }
    r
}

async fn server() -> (S, String) {
    let s: S = Arc::default();
    let app = Router::new().fallback(any).with_state(s.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (s, format!("http://{addr}"))
}

fn script(s: &S, answers: &[(u16, Option<&str>, &str)]) {
    let mut g = s.lock().unwrap();
    g.bearers.clear();
    g.answers = answers
        .iter()
        .map(|(c, r, b)| (*c, r.map(String::from), b.to_string()))
        .collect();
}

/// An agent client whose credentials are Secret `creds` in `ns` (loaded once).
async fn agent_client(
    kube: &kube::Client,
    ns: &str,
) -> (Arc<Metrics>, Arc<CredentialStore>, AgentClient) {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(CredentialStore::new(
        kube.clone(),
        metrics.clone(),
        SecretLocation {
            namespace: ns.to_string(),
            name: "creds".into(),
        },
    ));
    store.load().await.unwrap().unwrap();
    let client = AgentClient::new(store.clone(), metrics.clone(), Windows::default());
    (metrics, store, client)
}

/// Writes the agent's credentials Secret `creds` as the Cluster controller does.
async fn write_creds(secrets: &Api<Secret>, url: &str, cluster: &str, token: &str) {
    secrets
        .patch(
            "creds",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                "stringData": {"control-plane-base-url": url, "cluster-id": cluster, "token": token}})),
        )
        .await
        .unwrap();
}

fn noop() -> JobResult {
    JobResult {
        outcome: OUTCOME_NOOP.into(),
        error: String::new(),
        applied_ref: None,
        timestamp: jiff::Timestamp::now(),
    }
}

#[tokio::test]
async fn status_code_reactions() {
    let TestNamespace {
        client: kube, ns, ..
    } = test_namespace("agent-client").await.unwrap();
    let (s, url) = server().await;
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
    let write = |token: &'static str| write_creds(&secrets, &url, "c1", token);
    write("tok-1").await;
    let (metrics, store, client) = agent_client(&kube, &ns).await;
    let res = noop();

    // 200 with jobs: null → empty.
    assert!(client.poll(0).await.unwrap().entries.is_empty());
    assert_eq!(metrics.connectivity(), 1);

    // 409 on ack and result: success. 404 on job paths: JobGone.
    script(
        &s,
        &[
            (409, None, ""),
            (409, None, ""),
            (404, None, ""),
            (404, None, ""),
        ],
    );
    assert_eq!(client.ack("j1").await.unwrap(), Delivery::AlreadyClosed);
    assert_eq!(
        client.result("j1", &res).await.unwrap(),
        Delivery::AlreadyClosed
    );
    assert_eq!(client.ack("j2").await.unwrap_err(), ClientError::JobGone);
    assert_eq!(
        client.result("j2", &res).await.unwrap_err(),
        ClientError::JobGone
    );
    // 404 elsewhere: configuration error.
    script(
        &s,
        &[(
            404,
            None,
            r#"{"error":"NotFound","message":"unknown endpoint"}"#,
        )],
    );
    assert!(
        matches!(client.poll(0).await, Err(ClientError::EndpointNotFound(m)) if m.contains("unknown endpoint"))
    );

    // 429 with Retry-After (seconds and HTTP-date); 5xx → transient, connectivity drops.
    script(&s, &[(429, Some("7"), ""), (503, None, "")]);
    let e = client.poll(0).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    let e = client.poll(0).await.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(metrics.connectivity(), 0);
    assert!(client.poll(0).await.is_ok());
    assert_eq!(metrics.connectivity(), 1);

    // 401: one reload of the Secret; a rotated token there is retried at once.
    write("tok-2").await;
    script(&s, &[(401, None, ""), (200, None, r#"{"jobs":[]}"#)]);
    assert!(client.poll(0).await.is_ok());
    assert_eq!(
        s.lock().unwrap().bearers,
        vec!["Bearer tok-1".to_string(), "Bearer tok-2".to_string()]
    );
    // 401 again with an unchanged Secret: rejected, and nothing more is sent.
    script(&s, &[(401, None, ""), (401, None, "")]);
    assert!(matches!(
        client.poll(0).await,
        Err(ClientError::Unauthorized(_))
    ));
    assert!(store.is_rejected());
    assert!(matches!(
        client.events(&[dummy_event()]).await,
        Err(ClientError::Unauthorized(_))
    ));
    assert_eq!(s.lock().unwrap().bearers.len(), 1, "sent after rejection");
    // Connectivity is not blamed for an auth failure.
    assert_eq!(metrics.connectivity(), 1);
    // New Secret content resumes.
    write("tok-3").await;
    store.load().await.unwrap();
    assert!(!store.is_rejected());
    script(&s, &[]);
    assert!(client.poll(0).await.is_ok());

    // 403: stop, no retry, no reload.
    script(
        &s,
        &[(
            403,
            None,
            r#"{"error":"Forbidden","message":"wrong cluster"}"#,
        )],
    );
    assert!(
        matches!(client.poll(0).await, Err(ClientError::Forbidden(m)) if m.contains("wrong cluster"))
    );
    assert!(store.is_rejected());
    assert!(client.poll(0).await.is_err());
    assert_eq!(s.lock().unwrap().bearers.len(), 1);
    // Tokens never appear in error texts.
    assert!(!format!("{:?}", store.auth_state()).contains("tok-3"));
}

fn dummy_event() -> vworkspace_operator::agent::wire::Event {
    vworkspace_operator::agent::wire::Event {
        event_key: "k".into(),
        kind: "ConditionTransition".into(),
        resource_ref: Default::default(),
        conditions: vec![],
        endpoints: vec![],
        timestamp: jiff::Timestamp::now(),
    }
}

/// The same reactions against the mock control plane: its genuine 401/403/404/409 and
/// its fault injection (429 + Retry-After, 5xx, dropped connection).
#[tokio::test]
async fn status_codes_from_the_mock_control_plane() {
    use mock_control_plane::{Fault, MockConfig, MockServer};
    use vworkspace_operator::agent::client::register;
    use vworkspace_operator::agent::credentials::Token;

    let TestNamespace {
        client: kube, ns, ..
    } = test_namespace("agent-mock").await.unwrap();
    let mock = MockServer::start(MockConfig {
        registration_token: "vwksp-reg-client".into(),
        cluster_id: "c-mock".into(),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let admin = mock.admin();

    // Registration: the token works once, then 401.
    let (cluster, token) = register(&mock.url(), &Token::new("vwksp-reg-client"), None)
        .await
        .unwrap();
    assert_eq!(cluster, "c-mock");
    assert!(
        register(&mock.url(), &Token::new("vwksp-reg-client"), None)
            .await
            .is_err()
    );

    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
    let url = mock.url();
    let write = |cluster: String, token: String| {
        let (secrets, url) = (secrets.clone(), url.clone());
        async move { write_creds(&secrets, &url, &cluster, &token).await }
    };
    write(cluster.clone(), token.expose().to_string()).await;
    let (_metrics, store, client) = agent_client(&kube, &ns).await;
    let res = noop();

    assert!(client.poll(0).await.unwrap().entries.is_empty());
    // Unknown job: 404 → JobGone (dropped, not retried).
    assert_eq!(client.ack("ghost").await.unwrap_err(), ClientError::JobGone);
    // A real job: result once, then 409 → already closed (success).
    let job: vworkspace_protocol::Job =
        serde_json::from_value(json!({"id": "j1", "kind": "apply", "payload": {}})).unwrap();
    admin.enqueue(&cluster, &job).await.unwrap();
    assert_eq!(client.poll(0).await.unwrap().entries.len(), 1);
    assert_eq!(client.ack("j1").await.unwrap(), Delivery::Accepted);
    assert_eq!(client.result("j1", &res).await.unwrap(), Delivery::Accepted);
    assert_eq!(
        client.result("j1", &res).await.unwrap(),
        Delivery::AlreadyClosed
    );
    assert_eq!(client.ack("j1").await.unwrap(), Delivery::AlreadyClosed);

    // Injected 429 with Retry-After, 503, and a dropped connection.
    admin
        .inject_fault(Fault {
            retry_after: Some("9".into()),
            ..Fault::status("jobs", 429, 1)
        })
        .await
        .unwrap();
    let e = client.poll(0).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(9)));
    admin
        .inject_fault(Fault::status("events", 503, 1))
        .await
        .unwrap();
    let e = client.events(&[dummy_event()]).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    admin
        .inject_fault(Fault {
            endpoint: "jobs".into(),
            drop_connection: true,
            count: 1,
            ..Fault::default()
        })
        .await
        .unwrap();
    let e = client.poll(0).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(client.poll(0).await.is_ok(), "recovers after the faults");

    // Wrong cluster id with a valid token: 403 → stop.
    write("someone-else".into(), token.expose().to_string()).await;
    store.load().await.unwrap();
    assert!(matches!(
        client.poll(0).await,
        Err(ClientError::Forbidden(_))
    ));
    assert!(store.is_rejected());

    // Revoked token: 401; the reload finds the same Secret → rejected.
    write(cluster.clone(), token.expose().to_string()).await;
    store.load().await.unwrap();
    admin.revoke(&cluster).await.unwrap();
    assert!(matches!(
        client.poll(0).await,
        Err(ClientError::Unauthorized(_))
    ));
    assert!(store.is_rejected());
    // A fresh token in the Secret resumes at once.
    let fresh = admin.rotate(&cluster).await.unwrap();
    write(cluster.clone(), fresh).await;
    store.load().await.unwrap();
    assert!(client.poll(0).await.is_ok());
}
