//! Bearer-token authentication, as a tonic interceptor (server side) and a header adder (client).
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Server interceptor: the request must carry `authorization: Bearer <token>`. The comparison
/// hashes both sides first, so it takes the same time whatever the token's prefix.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Arc<[u8; 32]>,
}

impl BearerAuth {
    pub fn new(token: &str) -> Self {
        BearerAuth {
            expected: Arc::new(Sha256::digest(token.as_bytes()).into()),
        }
    }

    /// Whether `token` is the expected one.
    pub fn accepts(&self, token: &str) -> bool {
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        got.iter()
            .zip(self.expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing credentials: send the metadata `authorization: Bearer <token>`",
            ));
        };
        let token = value.to_str().ok().and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        match token {
            Some(t) if self.accepts(t.trim()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "the authorization metadata must be `Bearer <token>`",
            )),
        }
    }
}

/// Client interceptor adding the bearer token to every call.
#[derive(Clone)]
pub struct BearerToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl BearerToken {
    /// `None` sends no authorization metadata. Fails when the token is not valid ASCII metadata.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token must be printable ASCII".to_string())?,
            ),
            None => None,
        };
        Ok(BearerToken { header })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interceptor_rules() {
        let mut auth = BearerAuth::new("s3cret-token");
        let with = |v: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            r
        };
        assert!(auth.call(with(Some("Bearer s3cret-token"))).is_ok());
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("s3cret-token"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            let e = auth.call(with(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }
}
