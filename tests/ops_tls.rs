//! TLS (docs/reference.md "Configuration" `[server].tls`, `require_https`, `trusted_proxies`; "Request order" step 2;
//! an `https://` upstream with `ca_file`) through the real gateway.

mod support;

use std::time::Duration;

use bytes::Bytes;
use deskgate::app::Gateway;
use deskgate::config::Config;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::ops::*;

async fn tls_gateway(pki: &TestPki, dir: &ConfigDir, server: &str) -> Gateway {
    let upstream = start_upstream().await;
    let (cert, key) = pki.write(dir, "gw");
    let server =
        format!("tls = {{ cert = {:?}, key = {:?} }}\n{server}", cert.display().to_string(), key.display().to_string());
    let path = dir.write("deskgate.toml", &config_toml(&format!("http://{upstream}"), "", &server, ""));
    Gateway::start(Config::load(&path).expect("config")).await.expect("start")
}

fn api_request(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).header("authorization", basic_auth()).body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test]
async fn an_h2_client_negotiates_h2_by_alpn_and_is_served_over_https() {
    let pki = TestPki::new();
    let dir = ConfigDir::new();
    let gw = tls_gateway(&pki, &dir, "require_https = true").await;

    let (tls, proto) = tls_connect(&pki, gw.api_addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]));
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2 handshake");
    tokio::spawn(conn);
    // Two calls on one h2 connection: both served, both over HTTPS (require_https is on).
    for _ in 0..2 {
        let rsp = tokio::time::timeout(
            Duration::from_secs(10),
            tx.send_request(api_request("https://acme.freshdesk.com/api/v2/tickets")),
        )
        .await
        .expect("in time")
        .expect("response");
        let reply = read(rsp).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.version, Version::HTTP_2);
        assert!(reply.text().contains(r#""path":"/api/v2/tickets""#), "{}", reply.text());
        assert!(!reply.header("x-ratelimit-remaining").is_empty());
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_http11_client_is_served_over_https_when_it_offers_only_http11() {
    let pki = TestPki::new();
    let dir = ConfigDir::new();
    let gw = tls_gateway(&pki, &dir, "require_https = true").await;

    let (tls, proto) = tls_connect(&pki, gw.api_addr, &[b"http/1.1"]).await;
    assert_eq!(proto.as_deref(), Some(&b"http/1.1"[..]));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("h1 handshake");
    tokio::spawn(conn);
    let mut req = api_request("/api/v2/tickets");
    req.headers_mut().insert("host", http::HeaderValue::from_static("acme.freshdesk.com"));
    let reply = read(tx.send_request(req).await.expect("response")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.version, Version::HTTP_11);
    gw.shutdown().await;
}

#[tokio::test]
async fn plain_http_gets_ssl_required_unless_a_trusted_proxy_says_https() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    let path = dir.write(
        "deskgate.toml",
        &config_toml(
            &format!("http://{upstream}"),
            "",
            "require_https = true\ntrusted_proxies = [\"127.0.0.1/32\"]",
            "",
        ),
    );
    let gw = Gateway::start(Config::load(&path).expect("config")).await.expect("start");
    let auth = basic_auth();

    let plain = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&auth))).await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN);
    assert!(plain.text().contains("ssl_required"), "{}", plain.text());
    assert!(plain.text().contains("HTTPS is required in the API URL."), "{}", plain.text());

    let mut via_ingress = get("acme.freshdesk.com", "/api/v2/tickets", Some(&auth));
    via_ingress.headers_mut().insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
    let ok = send(gw.api_addr, via_ingress).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    // The portal is not policed: plain HTTP passes.
    let portal = send(gw.api_addr, get("acme.freshdesk.com", "/support/home", None)).await;
    assert_eq!(portal.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_claim_https_with_x_forwarded_proto() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    let path = dir.write(
        "deskgate.toml",
        &config_toml(&format!("http://{upstream}"), "", "require_https = true\ntrusted_proxies = [\"10.0.0.0/8\"]", ""),
    );
    let gw = Gateway::start(Config::load(&path).expect("config")).await.expect("start");
    let mut req = get("acme.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()));
    req.headers_mut().insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
    let reply = send(gw.api_addr, req).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.text().contains("ssl_required"), "{}", reply.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn an_https_upstream_signed_by_ca_file_is_reached_and_an_unknown_issuer_is_a_502() {
    let pki = TestPki::new();
    let upstream = start_upstream_with(Some(pki.server_config())).await;
    let dir = ConfigDir::new();
    let ca = dir.write("backend-ca.pem", &pki.ca_pem);
    let url = format!("https://127.0.0.1:{}", upstream.port());

    let with_ca =
        dir.write("with-ca.toml", &config_toml(&url, "", "", &format!("ca_file = {:?}", ca.display().to_string())));
    let gw = Gateway::start(Config::load(&with_ca).expect("config")).await.expect("start");
    let reply = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().contains(r#""authorization":true"#), "{}", reply.text());
    gw.shutdown().await;

    // Without the CA the upstream's certificate is not trusted: no call leaks in clear.
    let without = dir.write("without-ca.toml", &config_toml(&url, "", "", ""));
    let gw = Gateway::start(Config::load(&without).expect("config")).await.expect("start");
    let reply = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()))).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_after_a_reload() {
    let pki = TestPki::new();
    let dir = ConfigDir::new();
    let gw = tls_gateway(&pki, &dir, "").await;
    assert_eq!(presented_cert(&pki, gw.api_addr).await, pki.cert_der());

    let renewed = pki.reissued();
    renewed.write(&dir, "gw");
    gw.reload().await.expect("reload");
    assert_eq!(presented_cert(&pki, gw.api_addr).await, renewed.cert_der());

    // A broken key file fails the reload and keeps the certificate in force.
    dir.write("gw-key.pem", "not a key");
    let err = gw.reload().await.expect_err("broken key");
    // Refused by the loader, at the key that names the file.
    let err = err.to_string();
    assert!(err.contains("server.tls") && err.contains("gw-key.pem"), "{err}");
    assert_eq!(presented_cert(&pki, gw.api_addr).await, renewed.cert_der());
    gw.shutdown().await;
}
