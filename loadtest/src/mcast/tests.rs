use super::*;

#[test]
fn failure_reasons() {
    assert_eq!(classify(&McClientError::TimedOut), "timeout");
    let e = McClientError::Server {
        code: ringboot::proto::tftp::ErrorCode::FileNotFound,
        message: "File not found".into(),
    };
    assert_eq!(classify(&e), "server-error");
    assert_eq!(classify(&McClientError::NoGroup), "protocol");
}
