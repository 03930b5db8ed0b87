//! A stand-in for a topic ACL in front of tansu: tansu 0.6 stores ACLs but does not
//! enforce them, so this front refuses what a broker enforcing a write ACL refuses.
//!
//! It takes Kafka connections on a loopback port and relays every request to tansu's
//! listener, and every response back, byte for byte. While [`AclFront::deny_writes`]
//! is on, it answers each Produce request itself instead, with
//! `TOPIC_AUTHORIZATION_FAILED` for every partition the request names, as a broker
//! does for a principal without WRITE on the topic; the request never reaches tansu.
//! Responses keep the order of the requests on each connection, as Kafka's do. Frames
//! are decoded with the `kafka-protocol` crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, ResponseHeader};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, decode_request_header_from_buffer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Kafka's error code for a topic the principal may not use.
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;

/// The running front; stops when dropped.
pub struct AclFront {
    deny: Arc<AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl AclFront {
    /// Takes connections on `127.0.0.1:port` and relays them to `127.0.0.1:upstream`.
    pub fn start(port: u16, upstream: u16) -> AclFront {
        let deny = Arc::new(AtomicBool::new(false));
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the ACL front");
        listener.set_nonblocking(true).expect("non-blocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the ACL front's runtime");
        let denying = deny.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                let deny = denying.clone();
                tokio::spawn(async move {
                    if let Ok(broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = relay(client, broker, deny).await;
                    }
                });
            }
        });
        AclFront {
            deny,
            _runtime: runtime,
        }
    }

    /// Refuses (`true`) or lets through (`false`) every Produce request from now on.
    pub fn deny_writes(&self, deny: bool) {
        self.deny.store(deny, Ordering::SeqCst);
    }
}

/// What answers a request of a connection, in request order.
enum Answer {
    /// The broker's next response.
    Broker,
    /// A response the front made.
    Front(Bytes),
}

async fn relay(
    client: tokio::net::TcpStream,
    broker: tokio::net::TcpStream,
    deny: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    let (responses_tx, mut responses) = mpsc::unbounded_channel::<Bytes>();
    // The broker's responses, frame by frame.
    tokio::spawn(async move {
        while let Ok(frame) = read_frame(&mut broker_read).await {
            if responses_tx.send(frame).is_err() {
                break;
            }
        }
    });
    // The client's answers, in the order of its requests.
    tokio::spawn(async move {
        while let Some(answer) = answers.recv().await {
            let frame = match answer {
                Answer::Front(frame) => frame,
                Answer::Broker => match responses.recv().await {
                    Some(frame) => frame,
                    None => break,
                },
            };
            if client_write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let frame = read_frame(&mut client_read).await?;
        let refused = if deny.load(Ordering::SeqCst) {
            refuse_produce(&frame)
        } else {
            None
        };
        match refused {
            Some(response) => {
                let _ = answers_tx.send(Answer::Front(response));
            }
            None => {
                broker_write.write_all(&frame).await?;
                let _ = answers_tx.send(Answer::Broker);
            }
        }
    }
}

/// One frame, its 4-byte length first.
async fn read_frame(stream: &mut tokio::net::tcp::OwnedReadHalf) -> std::io::Result<Bytes> {
    let length = stream.read_i32().await?;
    let length = usize::try_from(length)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "negative length"))?;
    let mut frame = BytesMut::with_capacity(4 + length);
    frame.put_i32(length as i32);
    frame.resize(4 + length, 0);
    stream.read_exact(&mut frame[4..]).await?;
    Ok(frame.freeze())
}

/// For a Produce request, the response of a broker whose ACLs refuse every topic it
/// names; `None` for any other request.
fn refuse_produce(frame: &Bytes) -> Option<Bytes> {
    let mut body = frame.slice(4..);
    let api_key = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if api_key != ApiKey::Produce as i16 {
        return None;
    }
    let header = decode_request_header_from_buffer(&mut body).ok()?;
    let version = header.request_api_version;
    let request = ProduceRequest::decode(&mut body, version).ok()?;
    let topics = request
        .topic_data
        .iter()
        .map(|topic| {
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_topic_id(topic.topic_id)
                .with_partition_responses(
                    topic
                        .partition_data
                        .iter()
                        .map(|partition| {
                            PartitionProduceResponse::default()
                                .with_index(partition.index)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_base_offset(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    let response = ProduceResponse::default().with_responses(topics);
    let mut out = BytesMut::new();
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(header.correlation_id)
        .encode(&mut out, ProduceResponse::header_version(version))
        .ok()?;
    response.encode(&mut out, version).ok()?;
    let length = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&length.to_be_bytes());
    Some(out.freeze())
}
