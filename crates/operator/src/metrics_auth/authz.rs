//! Who may read `/metrics`: a TokenReview authenticates the bearer token, a
//! SubjectAccessReview asks whether that user may `get` the request's non-resource path.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// The verdict on one request. The strings are for the HTTP body and never contain the
/// token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// `401`: no bearer token, or one the API does not accept.
    Unauthenticated(String),
    /// `403`: a known user without `get` on the path.
    Forbidden(String),
    /// `503`: the reviews could not be made.
    Unavailable(String),
}

/// The bearer token of an `Authorization` header, if it is one.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The SubjectAccessReview for `user` reading `path`.
pub fn access_review(user: &UserInfo, path: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_string()),
                verb: Some("get".into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Makes the two reviews with the operator's own client (RBAC: `create` on
/// `tokenreviews` and `subjectaccessreviews`, chart `files/metrics-auth-rules.yaml`).
pub struct Authorizer {
    client: Client,
}

impl Authorizer {
    pub fn new(client: Client) -> Self {
        Authorizer { client }
    }

    pub async fn check(&self, header: Option<&str>, path: &str) -> Decision {
        let Some(token) = bearer(header) else {
            return Decision::Unauthenticated("Unauthorized: a bearer token is required\n".into());
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = match Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: TokenReview failed");
                return Decision::Unavailable("authentication unavailable\n".into());
            }
        };
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                return Decision::Unauthenticated("Unauthorized: token not accepted\n".into());
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let sar = match Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access_review(&user, path))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: SubjectAccessReview failed");
                return Decision::Unavailable("authorization unavailable\n".into());
            }
        };
        match sar.status {
            Some(s) if s.allowed => Decision::Allow,
            _ => {
                tracing::debug!(user = %name, path, "metrics: access denied");
                Decision::Forbidden(format!(
                    "Forbidden: user {name:?} may not get {path} (grant nonResourceURLs [{path}] verb get)\n"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_bearer_tokens_count() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn the_review_names_the_user_and_the_path() {
        let user = UserInfo {
            username: Some("system:serviceaccount:monitoring:prometheus".into()),
            uid: Some("u-1".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            extra: Some(
                [(
                    "authentication.kubernetes.io/pod-name".to_string(),
                    vec!["p".to_string()],
                )]
                .into_iter()
                .collect(),
            ),
        };
        let sar = access_review(&user, "/metrics");
        let spec = &sar.spec;
        assert_eq!(spec.user, user.username);
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(spec.groups, user.groups);
        assert_eq!(spec.extra.as_ref().unwrap().len(), 1);
        let nr = spec.non_resource_attributes.as_ref().unwrap();
        assert_eq!(
            (nr.path.as_deref(), nr.verb.as_deref()),
            (Some("/metrics"), Some("get"))
        );
        assert!(spec.resource_attributes.is_none());
    }
}
