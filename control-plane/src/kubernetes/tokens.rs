//! Workload identity in Kubernetes mode: the sidecar presents its pod's projected
//! service-account token (audience `serin` by default); the API server's TokenReview says whose
//! it is (`system:serviceaccount:NS:SA`, and the pod it is bound to).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The username prefix of service-account tokens.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The `extra` key naming the pod a bound token belongs to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Whose a token is, as the API server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The pod the token is bound to ("" for a token bound to no pod).
    pub pod_name: String,
}

/// Why a token grants no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The API server does not authenticate it (expired, revoked, another audience).
    #[error("the service-account token is not authenticated for audience {audience:?}: {reason}")]
    Unauthenticated {
        /// The audience asked for.
        audience: String,
        /// The API server's reason.
        reason: String,
    },
    /// It authenticates someone who is no service account.
    #[error("the token authenticates {0:?}, not a service account (system:serviceaccount:NS:SA)")]
    NotServiceAccount(String),
    /// The TokenReview itself failed.
    #[error("the TokenReview failed: {0}")]
    Api(String),
}

/// Reviews tokens with the API server for one audience.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer asking `client`'s API server about tokens for `audience`.
    pub fn new(client: kube::Client, audience: String) -> TokenReviewer {
        TokenReviewer { client, audience }
    }

    /// The audience tokens must be for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// POSTs a TokenReview of `token` and reads its outcome.
    pub async fn review(&self, token: &str) -> Result<TokenOwner, TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Api(e.to_string()))?;
        owner(&reviewed, &self.audience)
    }
}

/// What a reviewed TokenReview says about its token, for `audience`.
pub fn owner(review: &TokenReview, audience: &str) -> Result<TokenOwner, TokenError> {
    let unauthenticated = |reason: String| TokenError::Unauthenticated {
        audience: audience.to_owned(),
        reason,
    };
    let status = review
        .status
        .as_ref()
        .ok_or_else(|| unauthenticated("the review has no status".to_owned()))?;
    if status.authenticated != Some(true) {
        return Err(unauthenticated(
            status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "authenticated: false".to_owned()),
        ));
    }
    // An API server that answers with the audiences it checked must name ours.
    if let Some(audiences) = &status.audiences
        && !audiences.iter().any(|a| a == audience)
    {
        return Err(unauthenticated(format!(
            "the token is for the audiences {audiences:?}"
        )));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(TokenError::NotServiceAccount(username));
    };
    let pod_name = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|values| values.first().cloned())
        .unwrap_or_default();
    Ok(TokenOwner {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(status: &serde_json::Value) -> TokenReview {
        serde_json::from_value(json!({"spec": {}, "status": status})).unwrap()
    }

    #[test]
    fn service_account_tokens_name_their_namespace_account_and_pod() {
        let r = review(
            &json!({"authenticated": true, "audiences": ["serin"], "user": {
            "username": "system:serviceaccount:shop:reviews",
            "extra": {"authentication.kubernetes.io/pod-name": ["reviews-v1-a"]}}}),
        );
        assert_eq!(
            owner(&r, "serin").unwrap(),
            TokenOwner {
                namespace: "shop".into(),
                service_account: "reviews".into(),
                pod_name: "reviews-v1-a".into(),
            }
        );
        let e = owner(&r, "other").unwrap_err();
        assert!(e.to_string().contains("audiences [\"serin\"]"), "{e}");
        let r = review(&json!({"authenticated": false, "error": "token has expired"}));
        let e = owner(&r, "serin").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the service-account token is not authenticated for audience \"serin\": token has expired"
        );
        let r = review(&json!({"authenticated": true, "user": {"username": "alice"}}));
        assert_eq!(
            owner(&r, "serin").unwrap_err(),
            TokenError::NotServiceAccount("alice".into())
        );
        let r = review(
            &json!({"authenticated": true, "user": {"username": "system:serviceaccount:shop"}}),
        );
        assert!(matches!(
            owner(&r, "serin"),
            Err(TokenError::NotServiceAccount(_))
        ));
    }
}
