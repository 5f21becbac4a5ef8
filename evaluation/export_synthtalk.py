"""Write SynthTalk clips as evaluation videos: `<clip_id>.mp4` (frames + audio) and `<clip_id>.npz` (labels).

    python evaluation/export_synthtalk.py --data data/synthtalk --output eval/synthtalk_gt [--split test_id]

The folder is a ground-truth set for `rest evaluate --gt` (the `lipsync_gt` metric reads the `mouth_open` labels
from the .npz files); the clip's first frame can serve as the reference portrait.
"""

import argparse

from rest.metrics.lipsync_gt import export_shard_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SynthTalk shard root")
    parser.add_argument("--output", required=True, help="folder for the videos and labels")
    parser.add_argument("--split", default=None, help="only clips of this split (default: all)")
    parser.add_argument("--clips", nargs="*", default=None, help="only these clip ids")
    args = parser.parse_args()
    paths = export_shard_videos(args.data, args.output, split=args.split, clip_ids=args.clips)
    print(f"wrote {len(paths)} clips to {args.output}")


if __name__ == "__main__":
    main()
