// ingest: publishes one title to Kafka.
//
// input -> Segmenter -> proto records -> transactional producer. A segment's
// chunks always go out in one Kafka transaction, so a read_committed packager
// never sees half a segment, even if this process is killed. Segments are cut
// on a second thread while the previous transaction commits; a transaction
// carries every segment that is ready when it begins (one, when the input
// arrives in real time; a few, up to `max_transaction_bytes`, when reading a
// file faster than Kafka commits). The title start goes out in front of the
// first segment group, in its transaction (an input that yields no segment
// publishes nothing); the title end behind the last one, in its transaction when
// the input has ended by then (else in one of its own); both with the title's
// status in the compacted index topic "<topic>.titles". Success means every transaction
// was committed (every delivery acknowledged by all in-sync replicas).
//
// Before publishing, the index tells what the title holds: the same source
// again continues it (after a crash: packagers skip the segments they have) or,
// if complete, is a no-op; a different source is refused unless `replace`.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "khls/defaults.h"
#include "khls/kafka.h"
#include "khls/segmenter.h"
#include "khls/status.h"

namespace khls::ingest {

struct Params {
  /// Paths or URLs libavformat opens: the first is the title (video, every audio
  /// track, subtitles); each further one is another video variant of it (a
  /// bitrate ladder, keyframes aligned with the first).
  std::vector<std::string> inputs;
  std::string title;  ///< title id, [A-Za-z0-9._-]{1,128}
  std::string brokers = defaults::kBrokers;
  kafka::TopicSettings topic;  ///< created when missing
  segmenter::Params segmenter;
  /// Payload bytes per Kafka record; 0 (the default) = as large as the topic's
  /// max.message.bytes allows, up to defaults::kMaxAutoChunkSize (1984 KiB on a
  /// topic kafka-hls created, 960 KiB on one with the broker's 1 MB default). A
  /// size the topic cannot take is refused before anything is published.
  size_t chunk_size = defaults::kChunkSize;
  /// Publish at media speed: a segment goes out when its last frame's time has come,
  /// as a live encoder would. Off: as fast as the input is read.
  bool realtime = false;
  /// Extra librdkafka producer properties (-X key=value), applied last.
  kafka::Properties kafka;
  /// transactional.id; empty = "kafka-hls-ingest.<title>" (one live ingest per title:
  /// a second one fences the first).
  std::string transactional_id;
  /// Publish even though the title already holds a different source (or is
  /// complete): packagers switch to the new version atomically when it starts.
  bool replace = false;
  /// Segments cut ahead of the producer are held in memory up to this many
  /// bytes, and a transaction carries up to this many bytes of segments (always
  /// at least one segment): the bound on ingest memory is about twice this.
  uint64_t max_transaction_bytes = defaults::kMaxTransactionBytes;
  /// Seconds to wait for broker operations (init/commit of transactions, topic creation).
  int timeout_s = 60;
};

struct Report {
  bool already_complete = false;  ///< nothing was published: the title is complete with this source
  uint32_t title_version = 0;
  uint32_t segments = 0;
  uint64_t bytes = 0;          ///< MPEG-TS bytes published
  uint64_t records = 0;        ///< Kafka records published
  double media_seconds = 0;    ///< title duration
  double wall_seconds = 0;
  double first_segment_seconds = 0;  ///< from start until segment 0 (its first part, with parts) was committed
  std::string run_id;          ///< hex
};

/// Runs the ingest. Stops early (kCancelled, nothing more committed) when `stop` becomes true.
Result<Report> Run(const Params& params, const std::atomic<bool>& stop);

}  // namespace khls::ingest
