//! The handshake: the first frame on every connection is a [`Hello`] that
//! names the protocol version, the cluster and, for a Raft peer, the
//! sender's node id. The acceptor checks it ([`Hello::accept_peer`],
//! [`Hello::accept_client`]) and answers with one [`HelloReply`] frame:
//! `Accepted`, or `Refused` naming the reason ([`HelloError`]), after which
//! it closes the connection. After a peer's hello, every frame is one
//! `raft_core::Message`, in one direction only (the dialler writes, the
//! acceptor reads; the reply is the one frame the acceptor ever writes);
//! after a client's, the service's requests (and its responses the other
//! way, after the reply). A caller may send frames after its hello before
//! the reply comes: a refused connection's are never read.
//!
//! The reply's layout is frozen across versions, so that a caller of any
//! version can read why it was refused (a wrong version is a refusal too):
//! [`HelloReply`]'s and [`HelloError`]'s variants are only ever appended,
//! never reordered or changed. A variant a caller does not know fails to
//! decode, and the caller reports an unreadable refusal.

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks: 4 since streamed snapshots
/// (`InstallSnapshot` is a header, its bytes follow on a connection of their
/// own opened with [`Hello::PeerSnapshot`]) and since the acceptor answers
/// every hello ([`HelloReply`]: accepted, or refused naming the reason,
/// where 3 closed the connection without a word; a driver may carry the
/// frames inside TLS); 3 was reads without the log
/// (`ReadRound`/`ReadIndex` messages, `RequestVote::transfer`, sessionless
/// client reads); 2 was membership change (entries carry configurations,
/// `InstallSnapshot` the configuration at its index, clients send admin
/// requests and get member lists in status). A peer or client of another
/// version is refused at the hello.
pub const PROTOCOL_VERSION: u32 = 4;

/// The largest frame accepted before the hello: the one frame a stranger can
/// send, and a hello is a few varints. Also the limit on the acceptor's
/// [`HelloReply`].
pub const MAX_HELLO_FRAME: usize = 256;

/// The first frame on every connection. Its encoding is postcard's: a
/// variant index (0 for a peer, 1 for a client), then the fields as varints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Hello {
    /// A Raft peer: it sends `raft_core::Message` frames afterwards.
    Peer {
        /// Protocol version.
        version: u32,
        /// The cluster it belongs to.
        cluster_id: u64,
        /// Its node id.
        node_id: NodeId,
    },
    /// A client of the replicated service: it sends requests afterwards
    /// and reads responses.
    Client {
        /// Protocol version.
        version: u32,
        /// The cluster it wants.
        cluster_id: u64,
    },
    /// A Raft peer (a leader) streaming one snapshot on a connection of its
    /// own, beside its message connection: the driver's snapshot frames
    /// follow, and the acceptor answers when it has them all.
    PeerSnapshot {
        /// Protocol version.
        version: u32,
        /// The cluster it belongs to.
        cluster_id: u64,
        /// Its node id.
        node_id: NodeId,
    },
}

/// Which kind of connection a port takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Caller {
    /// A Raft peer.
    Peer,
    /// A client.
    Client,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Caller::Peer => "a peer",
            Caller::Client => "a client",
        })
    }
}

/// Why an acceptor refused a hello. Sent in a [`HelloReply::Refused`], so
/// its variants are only ever appended (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HelloError {
    /// The caller speaks another protocol version.
    #[error("protocol version {version}, the acceptor speaks {ours}")]
    Version {
        /// The caller's version.
        version: u32,
        /// The acceptor's.
        ours: u32,
    },
    /// The caller belongs to another cluster.
    #[error("cluster id {cluster_id} is not ours ({ours})")]
    WrongCluster {
        /// The caller's cluster.
        cluster_id: u64,
        /// Ours.
        ours: u64,
    },
    /// The caller claims a node id that is not one of our peers (ours
    /// included).
    #[error("node id {node_id} is not a peer of node {me}")]
    NotAPeer {
        /// The id it claims.
        node_id: NodeId,
        /// Ours.
        me: NodeId,
    },
    /// The caller is of the other kind (a client on the peer port, or a
    /// peer on the client port).
    #[error("{found} on the port for {expected}")]
    WrongCaller {
        /// What this port takes.
        expected: Caller,
        /// What called.
        found: Caller,
    },
    /// The caller spoke plaintext to a port that takes TLS only. (The
    /// refusal goes back in plaintext, the one frame such a port writes
    /// outside TLS.)
    #[error("this port takes TLS connections only")]
    TlsRequired,
    /// The caller opened a TLS handshake on a port that takes plaintext
    /// only. (A TLS caller cannot read the plaintext refusal; its TLS
    /// library reports a corrupt message.)
    #[error("this port takes plaintext connections only")]
    PlaintextOnly,
}

/// The acceptor's answer to a hello, the first frame it writes. Its
/// encoding is postcard's: 0 for `Accepted`; 1, then the [`HelloError`]'s
/// variant index and fields, for `Refused`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The hello was accepted: the connection is open.
    Accepted,
    /// The hello was refused: the acceptor closes the connection.
    Refused(HelloError),
}

impl HelloReply {
    /// The reply to the outcome of [`Hello::accept_peer`] or
    /// [`Hello::accept_client`].
    pub fn answering<T>(outcome: &Result<T, HelloError>) -> HelloReply {
        match outcome {
            Ok(_) => HelloReply::Accepted,
            Err(refusal) => HelloReply::Refused(refusal.clone()),
        }
    }

    /// The reply as the caller acts on it.
    pub fn into_result(self) -> Result<(), HelloError> {
        match self {
            HelloReply::Accepted => Ok(()),
            HelloReply::Refused(refusal) => Err(refusal),
        }
    }
}

/// Whether the first two bytes of a connection open a TLS handshake (a
/// handshake record, major version 3) rather than a plaintext hello frame,
/// whose length prefix (at most [`MAX_HELLO_FRAME`]) has 0 as its second
/// whose length prefix (at most [`MAX_HELLO_FRAME`], 256) has at most 1 as
/// its second byte. Lets a port tell a caller that speaks the other way
/// what is wrong.
pub fn looks_like_tls(first: [u8; 2]) -> bool {
    first == [0x16, 0x03]
}

impl Hello {
    /// A peer's hello in this protocol version.
    pub fn peer(cluster_id: u64, node_id: NodeId) -> Hello {
        Hello::Peer {
            version: PROTOCOL_VERSION,
            cluster_id,
            node_id,
        }
    }

    /// A peer's hello for a snapshot stream, in this protocol version.
    pub fn peer_snapshot(cluster_id: u64, node_id: NodeId) -> Hello {
        Hello::PeerSnapshot {
            version: PROTOCOL_VERSION,
            cluster_id,
            node_id,
        }
    }

    /// A client's hello in this protocol version.
    pub fn client(cluster_id: u64) -> Hello {
        Hello::Client {
            version: PROTOCOL_VERSION,
            cluster_id,
        }
    }

    /// What kind of caller sent it.
    pub fn caller(&self) -> Caller {
        match self {
            Hello::Peer { .. } | Hello::PeerSnapshot { .. } => Caller::Peer,
            Hello::Client { .. } => Caller::Client,
        }
    }

    /// Checks a hello on a peer port: a peer (for messages or a snapshot
    /// stream) of our version and cluster, whose id is a member
    /// (`is_member`) other than us. Returns its id.
    pub fn accept_peer(
        &self,
        cluster_id: u64,
        me: NodeId,
        is_member: impl Fn(NodeId) -> bool,
    ) -> Result<NodeId, HelloError> {
        let (Hello::Peer {
            version,
            cluster_id: theirs,
            node_id,
        }
        | Hello::PeerSnapshot {
            version,
            cluster_id: theirs,
            node_id,
        }) = *self
        else {
            return Err(HelloError::WrongCaller {
                expected: Caller::Peer,
                found: self.caller(),
            });
        };
        check_version_and_cluster(version, theirs, cluster_id)?;
        if node_id == me || !is_member(node_id) {
            return Err(HelloError::NotAPeer { node_id, me });
        }
        Ok(node_id)
    }

    /// Checks a hello on a client port: a client of our version and cluster.
    pub fn accept_client(&self, cluster_id: u64) -> Result<(), HelloError> {
        let Hello::Client {
            version,
            cluster_id: theirs,
        } = *self
        else {
            return Err(HelloError::WrongCaller {
                expected: Caller::Client,
                found: self.caller(),
            });
        };
        check_version_and_cluster(version, theirs, cluster_id)
    }
}

fn check_version_and_cluster(version: u32, theirs: u64, ours: u64) -> Result<(), HelloError> {
    if version != PROTOCOL_VERSION {
        return Err(HelloError::Version {
            version,
            ours: PROTOCOL_VERSION,
        });
    }
    if theirs != ours {
        return Err(HelloError::WrongCluster {
            cluster_id: theirs,
            ours,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_the_deployed_one() {
        // The hello's layout is unchanged since driver-tokio's version 1:
        // variant index, then varints (the version, now 4, first).
        assert_eq!(PROTOCOL_VERSION, 4);
        assert_eq!(
            postcard::to_allocvec(&Hello::peer(7, 2)).unwrap(),
            [0, 4, 7, 2]
        );
        assert_eq!(
            postcard::to_allocvec(&Hello::client(300)).unwrap(),
            [1, 4, 0xAC, 0x02]
        );
        assert_eq!(
            postcard::to_allocvec(&Hello::peer_snapshot(7, 2)).unwrap(),
            [2, 4, 7, 2]
        );
        let longest = Hello::Peer {
            version: u32::MAX,
            cluster_id: u64::MAX,
            node_id: u64::MAX,
        };
        assert!(postcard::to_allocvec(&longest).unwrap().len() <= MAX_HELLO_FRAME);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let members = |id: NodeId| id < 3;
        assert_eq!(Hello::peer(7, 1).accept_peer(7, 0, members), Ok(1));
        assert_eq!(
            Hello::peer(8, 1).accept_peer(7, 0, members),
            Err(HelloError::WrongCluster {
                cluster_id: 8,
                ours: 7
            })
        );
        assert_eq!(
            Hello::peer(7, 0).accept_peer(7, 0, members),
            Err(HelloError::NotAPeer { node_id: 0, me: 0 })
        );
        assert_eq!(
            Hello::peer(7, 5).accept_peer(7, 0, members),
            Err(HelloError::NotAPeer { node_id: 5, me: 0 })
        );
        let old = Hello::Peer {
            version: 0,
            cluster_id: 7,
            node_id: 1,
        };
        assert_eq!(
            old.accept_peer(7, 0, members),
            Err(HelloError::Version {
                version: 0,
                ours: PROTOCOL_VERSION
            })
        );
        assert!(matches!(
            Hello::client(7).accept_peer(7, 0, members),
            Err(HelloError::WrongCaller { .. })
        ));
        assert_eq!(Hello::client(7).accept_client(7), Ok(()));
        assert!(Hello::client(8).accept_client(7).is_err());
        assert!(Hello::peer(7, 1).accept_client(7).is_err());
    }

    #[test]
    fn the_reply_layout_is_frozen() {
        // Callers of every version read these bytes: they must not change.
        let bytes = |r: HelloReply| postcard::to_allocvec(&r).unwrap();
        assert_eq!(bytes(HelloReply::Accepted), [0]);
        let version = HelloError::Version {
            version: 9,
            ours: 4,
        };
        assert_eq!(bytes(HelloReply::Refused(version)), [1, 0, 9, 4]);
        let cluster = HelloError::WrongCluster {
            cluster_id: 8,
            ours: 7,
        };
        assert_eq!(bytes(HelloReply::Refused(cluster)), [1, 1, 8, 7]);
        let not_a_peer = HelloError::NotAPeer { node_id: 5, me: 0 };
        assert_eq!(bytes(HelloReply::Refused(not_a_peer)), [1, 2, 5, 0]);
        let wrong_caller = HelloError::WrongCaller {
            expected: Caller::Peer,
            found: Caller::Client,
        };
        assert_eq!(bytes(HelloReply::Refused(wrong_caller)), [1, 3, 0, 1]);
        assert_eq!(bytes(HelloReply::Refused(HelloError::TlsRequired)), [1, 4]);
        assert_eq!(
            bytes(HelloReply::Refused(HelloError::PlaintextOnly)),
            [1, 5]
        );
        let longest = HelloReply::Refused(HelloError::WrongCluster {
            cluster_id: u64::MAX,
            ours: u64::MAX,
        });
        assert!(bytes(longest).len() <= MAX_HELLO_FRAME);
        // A refusal of a later version (an unknown reason) fails to decode
        // rather than passing for another.
        assert!(postcard::from_bytes::<HelloReply>(&[1, 200]).is_err());
    }

    #[test]
    fn replies_follow_the_outcome() {
        let accepted = Hello::client(7).accept_client(7);
        assert_eq!(HelloReply::answering(&accepted), HelloReply::Accepted);
        assert_eq!(HelloReply::answering(&accepted).into_result(), Ok(()));
        let refused = Hello::client(8).accept_client(7);
        let reply = HelloReply::answering(&refused);
        assert_eq!(reply.clone().into_result(), refused);
        assert!(matches!(
            reply,
            HelloReply::Refused(HelloError::WrongCluster { .. })
        ));
    }

    #[test]
    fn tls_is_told_from_a_plaintext_hello() {
        assert!(looks_like_tls([0x16, 0x03]));
        for hello in [
            Hello::peer(u64::MAX, u64::MAX),
            Hello::client(0),
            Hello::peer(0x16, 3),
        ] {
            let frame = crate::encode_frame(&hello).unwrap();
            assert!(!looks_like_tls([frame[0], frame[1]]), "{hello:?}");
        }
        // Any frame within the hello limit: its second byte is 0 or 1.
        let most = (MAX_HELLO_FRAME as u32).to_le_bytes();
        assert!(!looks_like_tls([most[0], most[1]]));
    }
}
