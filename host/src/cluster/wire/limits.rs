//! Our caps on what a peer can make the codec allocate or recurse into.

// ---------------------------------------------------------------------------------------------
// Limits. memberlist's own are in net.go (maxPushStateBytes, maxPushStateNodes, ...); ours are
// the gateway's caps on what a peer can make us allocate.
// ---------------------------------------------------------------------------------------------

/// Largest datagram we produce or accept (largest IPv4 UDP payload).
pub(super) const MAX_PACKET_BYTES: usize = 65_507;
/// Most members accepted in one push/pull (memberlist allows 1Mi; we cap lower).
pub(super) const MAX_PUSH_NODES: i64 = 100_000;
/// Largest delegate state accepted in one push/pull.
pub(super) const MAX_USER_STATE: i64 = 64 * 1024 * 1024;
/// Largest stream user message (net.go `maxUserMsgBytes`).
pub(super) const MAX_USER_MSG: i64 = 20 * 1024 * 1024;
/// Largest encrypted stream frame or decompressed stream message: user state plus an equal
/// budget for nodes, the same reasoning as net.go `maxDecompressedBytes`.
pub(super) const MAX_STREAM_BYTES: usize = 2 * MAX_USER_STATE as usize;
/// Most bytes one UDP packet may inflate to, summed over all its compressed parts. memberlist
/// only compresses packets that were at most `UDPBufferSize` (1400 bytes by default) before
/// compression, so 1 MiB is generous and keeps a 64 KiB datagram from inflating into a large
/// allocation.
pub(super) const MAX_PACKET_DECOMPRESSED: usize = 1024 * 1024;
/// Most messages one packet may yield (255 per compound, nesting allowed).
pub(super) const MAX_PACKET_MESSAGES: usize = 65_536;
/// Deepest compound/compress nesting we follow (memberlist recurses without a limit, relying on
/// Go's growable stacks; ours are fixed).
pub(super) const MAX_NESTING: usize = 8;
/// Most messages in one compound (its count is a u8; util.go `makeCompoundMessages`).
pub(super) const MAX_COMPOUND_PARTS: usize = 255;
/// label.go `LabelMaxSize`.
pub(super) const LABEL_MAX: usize = 255;
