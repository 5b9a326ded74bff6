// The title index: the compacted topic "<topic>.titles" that holds each title's
// latest status (TitleStatus, key = title), written in the same transaction as
// the title start / end it mirrors (a live title's, also with each segment
// group's first records). Ingest reads it to decide, before publishing anything,
// whether a run continues, resumes, replaces or repeats a title (proto::Admit).
// Created with hourly segments and an eager cleaner, so that the statuses of
// live titles are compacted away while they run.
#pragma once

#include <atomic>
#include <optional>

#include "khls/ingest.h"
#include "khls/kafka.h"
#include "khls/proto.h"
#include "khls/status.h"

namespace khls::ingest::internal {

/// Client settings a consumer shares with the producer: how to reach and
/// authenticate to the cluster (security.*, sasl.*, ssl.*, client.dns.lookup).
kafka::Properties ConnectionProps(const kafka::Properties& producer);

/// The title's latest status in the index topic, if it has one (a scan of the
/// committed records; a malformed one is skipped with a warning). `missing_is_empty`:
/// an index topic that does not exist yet holds nothing (else the scan waits for it).
Result<std::optional<proto::TitleStatus>> LatestStatus(const Params& p, const std::atomic<bool>& stop,
                                                       bool missing_is_empty = false);

}  // namespace khls::ingest::internal
