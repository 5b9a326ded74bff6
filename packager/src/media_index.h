// Indexes of one HLS media segment, read from its bytes alone (no FFmpeg, no
// Kafka): where each video access unit of an MPEG-TS segment lies and whether
// it is a keyframe, where each fragment of a fragmented-MP4 segment and its
// first samples lie, and the tracks of an fMP4 init segment. They feed I-frame
// playlists (EXT-X-BYTERANGE of each keyframe) and the check that a segment
// decodes without the ones before it (EXT-X-INDEPENDENT-SEGMENTS).
//
// Every parser is bounds-checked: hostile input gives kMalformedRecord naming
// the byte offset and the reason, never a read out of bounds.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "khls/status.h"

namespace khls::packager {

/// One video access unit (PES) of an MPEG-TS segment, in decode order.
struct TsAccessUnit {
  /// Byte offset of the first TS packet carrying this PES (the packet with payload_unit_start_indicator).
  uint64_t offset = 0;
  /// Bytes up to and including the last TS packet carrying this PES's payload (packets of other PIDs in
  /// between are included); a multiple of 188.
  uint64_t size = 0;
  /// Presentation time, 90 kHz, from the PES header; the 33-bit value as read; -1 when the PES has no PTS.
  int64_t pts = 0;
  /// Decode time, 90 kHz, from the PES header; equals pts when the PES carries no DTS.
  int64_t dts = 0;
  /// The PES starts a random access point: random_access_indicator set in its first packet, or its first
  /// VCL NAL unit is an H.264 IDR (5) or an HEVC IRAP (16..21).
  bool keyframe = false;
  /// random_access_indicator was set for this PES (a subset of `keyframe`).
  bool random_access = false;
  /// Type of the first VCL NAL unit (H.264 1..5, HEVC 0..31), found in the first kTsNalScanBytes of the
  /// PES payload; -1 when none was found there.
  int nal_type = -1;
};

/// How many bytes of each video PES payload IndexTs assembles to find its first VCL NAL unit.
inline constexpr size_t kTsNalScanBytes = 16 * 1024;

/// The video index of one MPEG-TS segment.
struct TsIndex {
  /// Bytes of the PSI packets (PAT, PMT, SDT...) before the first packet of an elementary stream listed
  /// in the PMT: the EXT-X-MAP byte range of an I-frame playlist. PAT and PMT both lie inside it unless
  /// `psi_in_header` is false.
  uint64_t header_size = 0;
  /// The PAT and the PMT both lie within [0, header_size).
  bool psi_in_header = false;
  /// PID of the PMT that was used (the first program of the PAT).
  uint16_t pmt_pid = 0;
  /// PID of the first video stream of the PMT (H.264 stream_type 0x1B, HEVC 0x24); 0: none.
  uint16_t video_pid = 0;
  /// The video stream is HEVC (stream_type 0x24); false for H.264 or no video.
  bool hevc = false;
  /// Every video PES that starts in the segment, in decode order.
  std::vector<TsAccessUnit> video;
  /// The segment can be decoded from its start without earlier segments: no video, or its first video
  /// packet starts a PES (no tail of an earlier PES) whose access unit is a keyframe that is an H.264 IDR,
  /// an HEVC IDR (19, 20) or BLA (16..18), or an HEVC CRA (21) without leading pictures that need earlier
  /// ones: no later AU of the segment, in decode order, has a pts below the CRA's (compared modulo 2^33)
  /// unless its first VCL NAL unit is a RADL (6, 7). An H.264 recovery-point I picture (random access,
  /// nal 1) is not independent.
  bool starts_independent = false;
};

/// Parses one segment of MPEG-TS: 188-byte packets, the first PAT program and its PMT, the first video
/// stream's PES headers and the first VCL NAL unit of each PES (Annex B). kMalformedRecord, with the byte
/// offset and the reason, on a lost sync byte, a truncated packet, a bad adaptation field or PES header,
/// or no PAT/PMT. Linear in the input; only the first kTsNalScanBytes of each PES payload are copied.
Result<TsIndex> IndexTs(std::span<const uint8_t> ts);

/// Track ids, timescales and fragment defaults from an init segment (ftyp+moov).
struct Fmp4TrackInfo {
  uint32_t track_id = 0;   ///< moov/trak/tkhd track_ID
  uint32_t timescale = 0;  ///< moov/trak/mdia/mdhd timescale (ticks per second)
  std::string handler;     ///< moov/trak/mdia/hdlr handler_type: "vide", "soun", "text", "subt"...
  bool has_trex = false;   ///< moov/mvex/trex of this track was found; the three defaults below are its values
  uint32_t default_sample_duration = 0;  ///< trex default_sample_duration
  uint32_t default_sample_size = 0;      ///< trex default_sample_size
  uint32_t default_sample_flags = 0;     ///< trex default_sample_flags
};

/// One fragment (moof + mdat) of a fragmented-MP4 media segment (.m4s).
struct Fmp4Fragment {
  uint64_t moof_offset = 0;  ///< file offset of the moof box
  uint64_t moof_size = 0;    ///< size of the moof box, header included
  uint64_t mdat_offset = 0;  ///< file offset of the mdat box that follows the moof (other boxes may sit between)
  uint64_t mdat_size = 0;    ///< size of the mdat box, header included
  uint64_t mdat_header = 0;  ///< size of the mdat box header: 8, or 16 with a 64-bit largesize
  uint32_t sequence_number = 0;  ///< mfhd sequence_number
  /// One traf of the moof.
  struct Track {
    uint32_t track_id = 0;          ///< tfhd track_ID
    uint64_t base_decode_time = 0;  ///< tfdt baseMediaDecodeTime, track timescale; 0 without tfdt
    uint32_t sample_count = 0;      ///< samples of every trun of the traf
    /// Absolute file offset of the track's first sample in this fragment: trun data_offset plus the tfhd
    /// base_data_offset, else the moof start (default-base-is-moof, or the first traf), else the end of the
    /// previous traf's data; 0 without samples.
    uint64_t first_sample_offset = 0;
    uint64_t first_sample_size = 0;  ///< bytes of that sample (trun, tfhd or trex default size)
    /// The first sample is a sync sample (sample_is_non_sync_sample == 0), from trun first_sample_flags,
    /// its per-sample flags, or the tfhd / trex default flags; false when no flags are known.
    bool first_sample_sync = false;
    uint64_t duration = 0;  ///< sum of the sample durations (trun, tfhd or trex default), track timescale
  };
  std::vector<Track> tracks;  ///< in traf order
};

/// Parses a whole .m4s: one or more moof + mdat pairs; styp, sidx, ssix, prft, emsg, free and other
/// top-level boxes are skipped. `init_tracks` (from IndexInit) supplies the trex defaults a traf may rely
/// on; without them a traf that needs a default its tfhd does not carry is kMalformedRecord. Every run's
/// sample data must lie inside the file.
Result<std::vector<Fmp4Fragment>> IndexFmp4(std::span<const uint8_t> m4s,
                                            std::span<const Fmp4TrackInfo> init_tracks = {});

/// Sets the mfhd sequence_number of every moof in place, counting up from `first`. kMalformedRecord when
/// there is no moof, a moof has no mfhd, or the boxes do not parse.
Status SetFragmentSequence(std::span<uint8_t> m4s, uint32_t first);

/// Reads the tracks of an init segment (ftyp + moov): moov/trak/{tkhd track_ID, mdia/mdhd timescale,
/// mdia/hdlr handler type} and moov/mvex/trex defaults. kMalformedRecord without moov or tracks.
Result<std::vector<Fmp4TrackInfo>> IndexInit(std::span<const uint8_t> init);

}  // namespace khls::packager
