//! RFC 9457 problem details: every error of `/api/v1` is an `application/problem+json` body
//! `{"type","title","status","detail","errors":[{"field","reason"}]}`, so a controller reads
//! which field of its request is at fault instead of parsing prose. Pure: values in, bytes
//! out. (The routes outside `/api/v1` keep their text answers for compatibility.)

use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER},
    Response, StatusCode,
};
use serde::Serialize;

use crate::model::inventory::resource::FieldError;

/// The media type of a problem body.
pub const MEDIA: &str = "application/problem+json";

/// `type` of a refused field value: the body says which (`errors`).
pub const VALIDATION: &str = "https://bootfabric.dev/problems/validation";
/// `type` of a change that collides with another resource.
pub const CONFLICT: &str = "https://bootfabric.dev/problems/conflict";

/// One field at fault, as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Field {
    /// Dotted field name inside the resource (`mac`, `bmc.url`, `meta.role`).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl From<FieldError> for Field {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// A problem detail (RFC 9457 section 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status code, repeated.
    pub status: u16,
    /// This occurrence, in words.
    pub detail: String,
    /// The fields at fault, when the request's content is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Field>,
    /// Seconds after which the request may succeed (`Retry-After`, RFC 9110 section
    /// 10.2.3): a 503 while etcd cannot take writes.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    /// A problem whose status says what kind it is (`type` is `about:blank`, `title` the
    /// status's reason phrase, as RFC 9457 section 4.2.1 asks).
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            type_: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// Fields of the request refused (422).
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        Self {
            type_: VALIDATION,
            title: "The request has invalid fields".to_owned(),
            status: StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
            detail: summary(&errors),
            errors: errors.into_iter().map(Field::from).collect(),
            retry_after: None,
        }
    }

    /// The change collides with other resources (409).
    pub fn conflict(errors: Vec<FieldError>) -> Self {
        Self {
            type_: CONFLICT,
            title: "The change conflicts with other resources".to_owned(),
            status: StatusCode::CONFLICT.as_u16(),
            detail: summary(&errors),
            errors: errors.into_iter().map(Field::from).collect(),
            retry_after: None,
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The problem as a response.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = self.status();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA));
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// The first error, and how many more, for `detail`.
fn summary(errors: &[FieldError]) -> String {
    match errors {
        [] => "the request was refused".to_owned(),
        [one] => format!("{}: {}", one.field, one.reason),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more)",
            first.field,
            first.reason,
            rest.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_have_the_rfc_9457_shape() {
        let p = Problem::invalid(vec![FieldError::new("mac", "\"52\" is not a MAC address")]);
        let v: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&p).expect("json")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "type": VALIDATION,
                "title": "The request has invalid fields",
                "status": 422,
                "detail": "mac: \"52\" is not a MAC address",
                "errors": [{"field": "mac", "reason": "\"52\" is not a MAC address"}],
            })
        );
        let p = Problem::new(StatusCode::PRECONDITION_REQUIRED, "send If-Match");
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["title"], "Precondition Required");
        assert_eq!(v["status"], 428);
        assert!(v.get("errors").is_none(), "no empty list");
        let resp = p.response();
        assert_eq!(resp.status(), StatusCode::PRECONDITION_REQUIRED);
        assert_eq!(resp.headers()[CONTENT_TYPE], MEDIA);
    }
}
