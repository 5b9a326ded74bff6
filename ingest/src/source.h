// What an ingest publishes, named by a fingerprint (see khls/title_identity.h):
// the same inputs with the same options give the same fingerprint, so a re-run
// after a crash continues the title; anything that changes the bytes of the
// segments gives another one.
#pragma once

#include <cstdint>

#include "khls/ingest.h"
#include "khls/proto.h"

namespace khls::ingest::internal {

struct SourceFingerprint {
  proto::Digest digest{};  ///< all zero when an input is not a regular file (live): never the same source
  uint64_t size = 0;       ///< bytes of all inputs
};

/// XXH3-128 over: the layout of this digest, every input file's size and its first
/// and last MiB, and every option that decides the segments' bytes (segment
/// duration, audio languages, sidecar subtitle files and their languages). A
/// missing or non-regular input (a URL) gives the zero fingerprint.
SourceFingerprint Fingerprint(const Params& p);

}  // namespace khls::ingest::internal
