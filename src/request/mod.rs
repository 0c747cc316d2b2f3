//! The request's stages before the revocation check: where the token is, whether it is
//! genuine, who sent it, which mode its path is in, and the decision that comes out.

pub mod client_ip;
pub mod decision;
pub mod invalid_token_budget;
pub mod keys;
pub mod route;
pub mod token_source;
pub mod verified_cache;
pub mod verify;
