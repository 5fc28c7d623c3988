#!/usr/bin/env bash
# Backs up and restores the scheduler's SQLite database (scheduler.db under the
# scheduler's --data_dir) without stopping the scheduler: `VACUUM INTO` reads
# one consistent snapshot inside a read transaction (WAL mode lets the
# scheduler keep writing meanwhile) and writes a compact, self-contained copy
# (no -wal file to carry along). The copy is checked (PRAGMA integrity_check)
# before it replaces anything. Needs sqlite3 >= 3.27 where it runs (the
# Tunefleet images have it).
#
#   scheduler-backup.sh backup  --db /var/lib/tunefleet/scheduler.db --out FILE
#   scheduler-backup.sh backup  --kubectl [--namespace tunefleet] --out FILE
#   scheduler-backup.sh restore --in FILE --data-dir DIR [--force]   # scheduler stopped
#   scheduler-backup.sh restore --kubectl [--namespace tunefleet] --in FILE
#
# --kubectl backup runs VACUUM INTO in the running pod tunefleet-scheduler-0
# and copies the file out (kubectl cp). --kubectl restore scales the
# scheduler to 0, copies the file onto its volume from a helper pod, and
# scales it back to 1: the only step that stops the scheduler.
set -euo pipefail

die() { echo "scheduler-backup: $*" >&2; exit 1; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

mode="${1:-}"; [ -n "$mode" ] || usage; shift
db="" out="" in="" data_dir="" force=0 kube=0 ns=tunefleet
pod=tunefleet-scheduler-0 container=scheduler pod_db=/var/lib/tunefleet/scheduler.db
while [ $# -gt 0 ]; do
  case "$1" in
    --db) db="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --in) in="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --kubectl) kube=1; shift ;;
    --namespace|-n) ns="$2"; shift 2 ;;
    *) usage ;;
  esac
done

check() {  # FILE: a sound SQLite database holding the scheduler's tables
  local result
  result="$(sqlite3 "$1" "PRAGMA integrity_check;")" || die "$1: cannot open"
  [ "$result" = "ok" ] || die "$1: integrity_check: $result"
  sqlite3 "$1" "SELECT count(*) FROM jobs;" >/dev/null || die "$1: no jobs table (not a scheduler database?)"
}

sql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

case "$mode" in
  backup)
    [ -n "$out" ] || die "backup needs --out FILE"
    [ ! -e "$out" ] || die "$out exists; refusing to overwrite it"
    tmp="$out.tmp-$$"
    trap 'rm -f "$tmp"' EXIT
    if [ "$kube" = 1 ]; then
      remote="/var/lib/tunefleet/backup-$$.db"
      kubectl -n "$ns" exec "$pod" -c "$container" -- \
        sqlite3 "$pod_db" ".timeout 30000" "VACUUM INTO $(sql_quote "$remote");"
      if ! kubectl -n "$ns" cp -c "$container" "$pod:$remote" "$tmp"; then
        kubectl -n "$ns" exec "$pod" -c "$container" -- rm -f "$remote" || true
        die "kubectl cp failed"
      fi
      kubectl -n "$ns" exec "$pod" -c "$container" -- rm -f "$remote"
    else
      [ -n "$db" ] || die "backup needs --db PATH or --kubectl"
      [ -f "$db" ] || die "$db: no such database"
      # .timeout: wait (not fail) while the scheduler holds a write lock.
      sqlite3 "$db" ".timeout 30000" "VACUUM INTO $(sql_quote "$tmp");"
    fi
    check "$tmp"
    mv "$tmp" "$out"
    trap - EXIT
    echo "backup: $out ($(sqlite3 "$out" "SELECT count(*) FROM jobs;") jobs)"
    ;;
  restore)
    [ -n "$in" ] || die "restore needs --in FILE"
    check "$in"
    if [ "$kube" = 1 ]; then
      image="$(kubectl -n "$ns" get statefulset tunefleet-scheduler \
        -o jsonpath='{.spec.template.spec.containers[0].image}')"
      kubectl -n "$ns" scale statefulset tunefleet-scheduler --replicas=0
      kubectl -n "$ns" wait --for=delete "pod/$pod" --timeout=300s || true
      kubectl -n "$ns" run tunefleet-restore --restart=Never --image="$image" \
        --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":10001,"runAsGroup":10001,"fsGroup":10001},
          "containers":[{"name":"restore","image":"'"$image"'","command":["sleep","3600"],
          "securityContext":{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"capabilities":{"drop":["ALL"]}},
          "volumeMounts":[{"name":"data","mountPath":"/var/lib/tunefleet"}]}],
          "volumes":[{"name":"data","persistentVolumeClaim":{"claimName":"data-tunefleet-scheduler-0"}}]}}'
      kubectl -n "$ns" wait --for=condition=Ready pod/tunefleet-restore --timeout=300s
      kubectl -n "$ns" cp "$in" tunefleet-restore:/var/lib/tunefleet/scheduler.db.restore
      kubectl -n "$ns" exec tunefleet-restore -- sh -c \
        'cd /var/lib/tunefleet && [ ! -f scheduler.db ] || mv scheduler.db "scheduler.db.before-restore-$(date +%s)"; rm -f scheduler.db-wal scheduler.db-shm && mv scheduler.db.restore scheduler.db'
      kubectl -n "$ns" delete pod tunefleet-restore --wait=true
      kubectl -n "$ns" scale statefulset tunefleet-scheduler --replicas=1
    else
      [ -n "$data_dir" ] || die "restore needs --data-dir DIR or --kubectl"
      mkdir -p "$data_dir"
      target="$data_dir/scheduler.db"
      if [ -e "$target" ] && [ "$force" != 1 ]; then
        die "$target exists; stop the scheduler and pass --force to replace it"
      fi
      [ ! -e "$target" ] || mv "$target" "$target.before-restore-$(date +%s)"
      # A -wal left by the old database must not be replayed onto the copy.
      rm -f "$target-wal" "$target-shm"
      cp "$in" "$target.tmp-$$" && mv "$target.tmp-$$" "$target"
    fi
    echo "restored $in ($(sqlite3 "$in" "SELECT count(*) FROM jobs;") jobs)"
    ;;
  *) usage ;;
esac
