//! Header names (RFC 3261 §20 and the RFCs that define the others), in
//! their canonical spelling: the one place each is written. Lookups are
//! case-insensitive and accept compact forms
//! ([`Headers::get`](crate::message::Headers::get)), so these are for
//! writing headers and naming the ones read.

/// `Accept`.
pub const ACCEPT: &str = "Accept";
/// `Accept-Contact`.
pub const ACCEPT_CONTACT: &str = "Accept-Contact";
/// `Allow`.
pub const ALLOW: &str = "Allow";
/// `Allow-Events`.
pub const ALLOW_EVENTS: &str = "Allow-Events";
/// `Authorization`.
pub const AUTHORIZATION: &str = "Authorization";
/// `Call-ID`.
pub const CALL_ID: &str = "Call-ID";
/// `Contact`.
pub const CONTACT: &str = "Contact";
/// `Content-Encoding`.
pub const CONTENT_ENCODING: &str = "Content-Encoding";
/// `Content-Length`.
pub const CONTENT_LENGTH: &str = "Content-Length";
/// `Content-Type`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// `CSeq`.
pub const CSEQ: &str = "CSeq";
/// `Event`.
pub const EVENT: &str = "Event";
/// `Expires`.
pub const EXPIRES: &str = "Expires";
/// `From`.
pub const FROM: &str = "From";
/// `Identity`.
pub const IDENTITY: &str = "Identity";
/// `Max-Forwards`.
pub const MAX_FORWARDS: &str = "Max-Forwards";
/// `Min-Expires`.
pub const MIN_EXPIRES: &str = "Min-Expires";
/// `Min-SE`.
pub const MIN_SE: &str = "Min-SE";
/// `Proxy-Authenticate`.
pub const PROXY_AUTHENTICATE: &str = "Proxy-Authenticate";
/// `Proxy-Authorization`.
pub const PROXY_AUTHORIZATION: &str = "Proxy-Authorization";
/// `Proxy-Require`.
pub const PROXY_REQUIRE: &str = "Proxy-Require";
/// `Reason`.
pub const REASON: &str = "Reason";
/// `Record-Route`.
pub const RECORD_ROUTE: &str = "Record-Route";
/// `Refer-Sub`.
pub const REFER_SUB: &str = "Refer-Sub";
/// `Refer-To`.
pub const REFER_TO: &str = "Refer-To";
/// `Referred-By`.
pub const REFERRED_BY: &str = "Referred-By";
/// `Reject-Contact`.
pub const REJECT_CONTACT: &str = "Reject-Contact";
/// `Request-Disposition`.
pub const REQUEST_DISPOSITION: &str = "Request-Disposition";
/// `Require`.
pub const REQUIRE: &str = "Require";
/// `Retry-After`.
pub const RETRY_AFTER: &str = "Retry-After";
/// `Route`.
pub const ROUTE: &str = "Route";
/// `Server`.
pub const SERVER: &str = "Server";
/// `Session-Expires`.
pub const SESSION_EXPIRES: &str = "Session-Expires";
/// `Subject`.
pub const SUBJECT: &str = "Subject";
/// `Subscription-State`.
pub const SUBSCRIPTION_STATE: &str = "Subscription-State";
/// `Supported`.
pub const SUPPORTED: &str = "Supported";
/// `To`.
pub const TO: &str = "To";
/// `Unsupported`.
pub const UNSUPPORTED: &str = "Unsupported";
/// `User-Agent`.
pub const USER_AGENT: &str = "User-Agent";
/// `Via`.
pub const VIA: &str = "Via";
/// `WWW-Authenticate`.
pub const WWW_AUTHENTICATE: &str = "WWW-Authenticate";
