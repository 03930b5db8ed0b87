//! Kafka against a broker that requires SASL/SCRAM logins: tansu 0.6 with
//! `--authentication` and SCRAM users of its own (it offers SCRAM-SHA-256 and
//! SCRAM-SHA-512, not PLAIN). Logins of `ingest` and `route` through TLS, credentials
//! the broker refuses at start and after a rotation, a SASL mechanism this build
//! lacks, and the Kafka destination's login from its properties file.

use std::process::{Command, Output};
use std::time::Duration;

use logferry_e2e::ACME_DESTINATIONS;
use logferry_e2e::backend::{Backend, backend_bin, free_port, send_lines, wait_for};
use logferry_e2e::kafka::{
    Broker, ScramUser, TOPIC, assert_agent_lines, assert_agents_landed, kafka_flags, router_flags,
    send_all, send_refused, start, wait_lines,
};

fn admin() -> ScramUser {
    ScramUser::new("admin", "admin-secret", "SCRAM-SHA-512")
}

fn ingester(password: &str) -> ScramUser {
    ScramUser::new("ingester", password, "SCRAM-SHA-512")
}

fn router() -> ScramUser {
    ScramUser::new("router", "router-secret", "SCRAM-SHA-256")
}

/// `logferry ROLE` with `login`, which is expected to exit at start.
fn run_refused(role: &str, data: &std::path::Path, broker: &Broker, login: &ScramUser) -> Output {
    Command::new(backend_bin())
        .arg(role)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(kafka_flags(broker))
        .args(login.flags())
        .output()
        .unwrap()
}

/// `ingest` and `route` log in with SCRAM (SHA-512 and SHA-256) through TLS
/// (`security.protocol=sasl_ssl`), each with a user of its own (the router's from
/// `--kafka-properties-file`); a client without a login learns nothing from the
/// broker; every record arrives once, in order.
#[test]
fn ingest_and_route_log_in_with_scram_over_tls() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    const LINES: usize = 20_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_sasl(
        broker_dir.path(),
        free_port(),
        true,
        &[admin(), ingester("ingester-secret"), router()],
    );
    // TLS alone is not enough: without a login the broker answers nothing.
    let mut tls_only = rdkafka::ClientConfig::new();
    for (name, value) in broker.connection_properties() {
        tls_only.set(name, value);
    }
    let tls_only: BaseConsumer = tls_only
        .set("bootstrap.servers", broker.brokers())
        .set("security.protocol", "ssl")
        .create()
        .unwrap();
    assert!(
        tls_only
            .fetch_metadata(None, Duration::from_secs(3))
            .is_err()
    );
    drop(tls_only);
    broker.create_topic(TOPIC, 2);

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingester = ingester("ingester-secret").flags();
    let ingester: Vec<&str> = ingester.iter().map(String::as_str).collect();
    let ingest = start("ingest", data.path(), port, &broker, &ingester);
    // The router's login comes from a properties file, as a Secret would hold it.
    let login = data.path().join("router.properties");
    let text: String = router()
        .properties()
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect();
    std::fs::write(&login, text).unwrap();
    let mut route_flags = router_flags();
    let login = login.display().to_string();
    route_flags.extend(["--kafka-properties-file", &login]);
    let _router = start("route", data.path(), 0, &broker, &route_flags);
    send_all(&ingest, port, LINES, Duration::from_millis(20));
    let files = data.path().join("files");
    assert_eq!(wait_lines(&files, LINES, Duration::from_secs(60)), LINES);
    std::thread::sleep(Duration::from_secs(1));
    assert_agent_lines(&files, 0, LINES);
}

/// Credentials the broker refuses are named, and lose nothing:
/// - at start, `ingest` (wrong password) and `route` (unknown user) exit 1 saying
///   which credentials Kafka refused and why;
/// - when the broker's password changes under a running ingester, its batches are
///   refused with UNAVAILABLE, a log line naming the refused login and
///   `logferry_kafka_produce_failures_total{reason="authentication"}`; the agent keeps
///   them, and an ingester with the new password takes them, each once, in order.
#[test]
fn refused_kafka_credentials_are_clear_and_nothing_is_lost() {
    const LINES: usize = 3_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_sasl(
        broker_dir.path(),
        free_port(),
        false,
        &[admin(), ingester("first"), router()],
    );
    broker.create_topic(TOPIC, 1);
    let data = tempfile::tempdir().unwrap();

    let out = run_refused("ingest", data.path(), &broker, &ingester("wrong"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("logferry: error: Kafka at")
            && stderr.contains("refused the ingester's credentials")
            && stderr.contains("invalid-proof")
            && stderr.contains("sasl.password"),
        "{stderr}"
    );
    let stranger = ScramUser::new("nobody", "x", "SCRAM-SHA-256");
    let out = run_refused("route", data.path(), &broker, &stranger);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused the router's credentials") && stderr.contains("unknown-user"),
        "{stderr}"
    );

    let port = free_port();
    let first = ingester("first").flags();
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let ingest = start("ingest", data.path(), port, &broker, &first);
    let mut route_flags = router_flags();
    let router = router().flags();
    route_flags.extend(router.iter().map(String::as_str));
    let _router = start("route", data.path(), 0, &broker, &route_flags);
    send_all(&ingest, port, LINES, Duration::from_millis(10));

    // The broker's password for `ingester` changes; the running ingester still has
    // the old one.
    broker.set_users(&[ingester("second")]);
    let mut sender = send_refused(
        &ingest,
        port,
        1,
        LINES,
        (
            "authentication",
            &["Kafka refused this ingester's credentials", "invalid-proof"],
        ),
    );

    // An ingester with the new password, where the agent looks for it.
    ingest.kill();
    let second = ingester("second").flags();
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let _ingest = start("ingest", data.path(), port, &broker, &second);
    assert!(sender.wait().unwrap().success(), "the sender gave up");
    assert_agents_landed(&data.path().join("files"), 2, LINES);
}

/// A SASL mechanism this build lacks (GSSAPI needs Cyrus SASL, which is not built in)
/// is refused at start with the mechanisms it has.
#[test]
fn a_sasl_mechanism_this_build_lacks_is_named_at_start() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(backend_bin())
        .arg("ingest")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--kafka-brokers", &format!("127.0.0.1:{}", free_port())])
        .args(["--kafka-property", "security.protocol=sasl_plaintext"])
        .args(["--kafka-property", "sasl.mechanism=GSSAPI"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("No provider for SASL mechanism GSSAPI")
            && stderr.contains("SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER")
            && stderr.contains("GSSAPI (Kerberos) is not built in"),
        "{stderr}"
    );
}

/// A Kafka destination logs in with the SASL properties of its `properties_file`
/// (the secret stays out of the registry). A refused login fails the destination's
/// steps with the broker's reason and loses nothing: once the file holds the right
/// password, a restarted backend publishes every record once.
#[test]
fn a_kafka_destination_logs_in_from_its_properties_file() {
    const LINES: usize = 2_000;
    let publisher = ScramUser::new("publisher", "publisher-secret", "SCRAM-SHA-256");
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_sasl(
        broker_dir.path(),
        free_port(),
        false,
        &[admin(), publisher.clone()],
    );
    broker.create_topic("copies", 1);
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    let login = data.join("kafka.properties");
    let write_login = |password: &str| {
        std::fs::write(
            &login,
            format!(
                "# the destination's login\nsasl.mechanism={}\nsasl.username={}\n\
                 sasl.password={password}\n",
                publisher.mechanism, publisher.name
            ),
        )
        .unwrap()
    };
    write_login("wrong");
    std::fs::write(
        data.join("tenants.yaml"),
        format!(
            "{ACME_DESTINATIONS}
      - name: files
        type: file
      - name: copies
        type: kafka
        brokers: {brokers}
        topic: copies
        properties_file: {login}
        properties:
          security.protocol: sasl_plaintext
",
            brokers = broker.brokers(),
            login = login.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let backend = Backend::start(data, port, &[]);
    send_lines(
        &backend,
        &["--tag", "app"],
        (0..LINES).map(|n| format!("line {n:05}")),
    );
    let files = data.join("destinations/acme.files");
    assert_eq!(wait_lines(&files, LINES, Duration::from_secs(60)), LINES);
    backend.wait_for_stderr("refused login", Duration::from_secs(60), |l| {
        l.contains("delivery failed, retrying")
            && l.contains("Kafka refused the kafka sink `acme.copies`'s credentials")
            && l.contains("invalid-proof")
    });
    assert_eq!(
        broker.count("copies"),
        0,
        "nothing published without a login"
    );

    write_login(&publisher.password);
    backend.stop();
    let _backend = Backend::start(data, port, &[]);
    wait_for("every record published", Duration::from_secs(60), || {
        broker.count("copies") >= LINES as i64
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut lines: Vec<String> = broker
        .read_topic("copies")
        .iter()
        .map(|m| {
            let record: serde_json::Value = serde_json::from_str(&m.value).unwrap();
            record["record"]["log"].as_str().unwrap().to_string()
        })
        .collect();
    lines.sort();
    let want: Vec<String> = (0..LINES).map(|n| format!("line {n:05}")).collect();
    assert_eq!(lines, want, "every record once");
}
