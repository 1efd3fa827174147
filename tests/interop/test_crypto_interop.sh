#!/bin/sh
# Interop of `clubio-dr encrypt|decrypt` with the stock tools, both ways: openssl enc
# -aes-256-cbc -salt -pbkdf2 (passphrase through -pass env:VAR, never argv), gzip, gunzip, zcat
# and pigz, at boundary sizes and a few MiB; failures leave no output or temp file; no plaintext
# temp file anywhere (TMPDIR is an empty folder that must stay empty).
#
#   tests/interop/test_crypto_interop.sh path/to/clubio-dr
# Prints "N passed, N failed"; exits 1 on any failure.
set -u
BIN=${1:-${CLUBIO_DR_BIN:-clubio-dr}}
case $BIN in /*) ;; *) BIN=$(pwd)/$BIN ;; esac
W=$(mktemp -d /tmp/clubio-interop-XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir "$W/tmp"
export TMPDIR="$W/tmp"
export K='interop passphrase with spaces & $ymbols'
export OTHER='the other passphrase'
unset BACKUP_ENCRYPTION_KEY
passed=0
failed=0

ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "not ok: $*" >&2; }
check() { # check "name" command...
    name=$1
    shift
    if "$@" >/dev/null 2>"$W/err"; then ok; else fail "$name ($(head -c 300 "$W/err"))"; fi
}

# Inputs: boundary sizes of random bytes, text, and a few MiB of SQL-like text.
for n in 0 1 15 16 17 31 32 33 1000 65536 65537; do
    head -c "$n" /dev/urandom >"$W/in.$n"
done
awk 'BEGIN { for (i = 0; i < 60000; i++) printf "%d\tuser%d@example.com\t2024-01-%02d 10:%02d:00\t%d.%02d\n", i, i * 7, i % 28 + 1, i % 60, i * 13 % 9999, i % 100 }' >"$W/in.text"
SIZES="0 1 15 16 17 31 32 33 1000 65536 65537 text"

cd "$W" || exit 1
for s in $SIZES; do
    f=in.$s
    # ours -> openssl
    check "encrypt $s | openssl -d" sh -c "'$BIN' encrypt --pass-env K -i $f -o o1.$s && openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in o1.$s | cmp -s - $f"
    # openssl -> ours
    check "openssl enc $s | decrypt" sh -c "openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:K -in $f -out s1.$s && '$BIN' decrypt --pass-env K -i s1.$s | cmp -s - $f"
    # ours gzip+encrypt -> openssl | gunzip / zcat / pigz -d
    check "encrypt --gzip $s | openssl | gunzip" sh -c "'$BIN' encrypt --gzip --pass-env K -i $f -o o2.$s && openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in o2.$s | gunzip | cmp -s - $f"
    check "encrypt --gzip $s | openssl | zcat" sh -c "openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in o2.$s | zcat | cmp -s - $f"
    check "encrypt --gzip $s | openssl | pigz -d" sh -c "openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in o2.$s | pigz -dc | cmp -s - $f"
    # gzip -6 / pigz + openssl -> ours
    check "gzip | openssl $s | decrypt --gunzip" sh -c "gzip -6 <$f | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:K -out s2.$s && '$BIN' decrypt --gunzip --pass-env K -i s2.$s | cmp -s - $f"
    check "pigz | openssl $s | decrypt --gunzip" sh -c "pigz -p 2 <$f | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:K -out s3.$s && '$BIN' decrypt --gunzip --pass-env K -i s3.$s | cmp -s - $f"
    # ours decrypt without --gunzip gives the gzip stream that stock gunzip reads
    check "decrypt $s | gunzip" sh -c "'$BIN' decrypt --pass-env K -i o2.$s | gunzip | cmp -s - $f"
done

# stdin/stdout by default; passphrase from BACKUP_ENCRYPTION_KEY
check "stdin -> stdout default key" sh -c "BACKUP_ENCRYPTION_KEY=\"\$K\" '$BIN' encrypt --gzip <in.text | openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K | gunzip | cmp -s - in.text"
check "-i - / -o -" sh -c "cat in.text | BACKUP_ENCRYPTION_KEY=\"\$K\" '$BIN' encrypt -i - -o - | BACKUP_ENCRYPTION_KEY=\"\$K\" '$BIN' decrypt -i - -o - | cmp -s - in.text"
# --pass-file, --iter both ways
printf '%s\n' "$K" >passfile
check "--pass-file" sh -c "'$BIN' encrypt --pass-file passfile -i in.1000 -o pf.enc && openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in pf.enc | cmp -s - in.1000"
check "--iter 1000 ours -> openssl" sh -c "'$BIN' encrypt --iter 1000 --pass-env K -i in.33 -o it.enc && openssl enc -d -aes-256-cbc -pbkdf2 -iter 1000 -pass env:K -in it.enc | cmp -s - in.33"
check "--iter 1000 openssl -> ours" sh -c "openssl enc -aes-256-cbc -salt -pbkdf2 -iter 1000 -pass env:K -in in.33 -out it2.enc && '$BIN' decrypt --iter=1000 --pass-env K -i it2.enc | cmp -s - in.33"
# multi-member gzip from stock gzip (gzip a; gzip b) | openssl -> ours
check "gzip multi-member -> decrypt --gunzip" sh -c "{ gzip -c in.1000; gzip -c in.text; pigz -c in.65537; } | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:K -out mm.enc && cat in.1000 in.text in.65537 >mm.plain && '$BIN' decrypt --gunzip --pass-env K -i mm.enc | cmp -s - mm.plain"
# a few MiB (several parallel members), threads and levels
head -c 3000000 /dev/urandom | od -An -tx1 | head -c 6000000 >big
check "6 MB --threads 2 --level 9" sh -c "'$BIN' encrypt --gzip --threads 2 --level 9 --pass-env K -i big -o big.enc && openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in big.enc | gunzip | cmp -s - big"
check "6 MB gzip -6 output size" sh -c "test \$(openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K -in big.enc | wc -c) -le \$(gzip -6 <big | wc -c)"
check "6 MB openssl -> ours" sh -c "gzip -1 <big | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:K -out big2.enc && '$BIN' decrypt --gunzip --pass-env K -i big2.enc | cmp -s - big"

# --json result when the output is a file: sha256 of the output and sizes
"$BIN" encrypt --json --gzip --pass-env K -i in.text -o j.enc >j.json 2>/dev/null
if grep -q "\"sha256\":\"$(sha256sum j.enc | cut -c1-64)\"" j.json &&
    grep -q "\"bytes_in\":$(wc -c <in.text | tr -d ' ')" j.json; then ok; else fail "--json result: $(cat j.json)"; fi

# refuses to overwrite; --force replaces
if "$BIN" encrypt --pass-env K -i in.1 -o j.enc 2>/dev/null; then fail "overwrote without --force"; else ok; fi
check "--force" "$BIN" encrypt --force --pass-env K -i in.1 -o j.enc
# a character device or a FIFO is written in place, no --force needed (issue 18 item 9: -o
# /dev/null said "already exists"); /dev/null is still a device afterwards (not renamed over)
check "decrypt -o /dev/null" "$BIN" decrypt --gunzip --pass-env K -i o2.text -o /dev/null
check "encrypt -o /dev/null" "$BIN" encrypt --gzip --pass-env K -i in.text -o /dev/null
if [ -c /dev/null ]; then ok; else fail "/dev/null is no longer a character device"; fi
mkfifo fifo
cat fifo >fifo.out &
check "decrypt -o FIFO" "$BIN" decrypt --gunzip --pass-env K -i o2.text -o fifo
wait
check "FIFO reader got the plaintext" cmp -s fifo.out in.text
# a wrong passphrase into a device: still the verify error (exit 4)
if "$BIN" decrypt --gunzip --pass-env OTHER -i o2.text -o /dev/null 2>dn.err; then fail "wrong passphrase into /dev/null accepted"; else
    [ $? -eq 4 ] && ok || fail "wrong passphrase into /dev/null: $(cat dn.err)"
fi
# a directory is refused with a usage error naming it; an existing regular file still needs --force
mkdir outdir
if "$BIN" decrypt --pass-env K -i o1.1 -o outdir 2>dir.err; then fail "wrote to a directory"; else
    [ $? -eq 2 ] && grep -q "outdir is a directory" dir.err && ok || fail "-o DIR: $(cat dir.err)"
fi
if "$BIN" decrypt --pass-env K -i o1.1 -o j.enc 2>/dev/null; then fail "decrypt overwrote a file without --force"; else ok; fi
rm -rf fifo fifo.out outdir dir.err dn.err

# failures: one clear line, non-zero status, no output file and no temp file
mkdir fails
for case in wrong-pass truncated flipped not-encrypted; do
    rm -rf fails/*
    cp o2.text fails/in.enc
    sz=$(wc -c <fails/in.enc)
    pass=K
    case $case in
    wrong-pass) pass=OTHER ;;
    truncated) head -c $((sz - 5)) o2.text >fails/in.enc ;;
    flipped) printf '\377' | dd of=fails/in.enc bs=1 seek=$((sz / 2)) conv=notrunc 2>/dev/null ;;
    not-encrypted) cp in.text fails/in.enc ;;
    esac
    "$BIN" decrypt --gunzip --pass-env $pass -i fails/in.enc -o fails/out.sql 2>fails.err
    rc=$?
    if [ $rc -ne 0 ] && [ "$(ls -A fails)" = "in.enc" ] && [ "$(grep -c '^clubio-dr:' fails.err)" = 1 ]; then ok; else
        fail "$case: rc=$rc files=$(ls -A fails | tr '\n' ' ') err=$(cat fails.err)"
    fi
    if grep -q "$K\|$OTHER" fails.err; then fail "$case: passphrase in error text"; else ok; fi
done
"$BIN" decrypt --gunzip --pass-env OTHER -i o2.text -o fails/x 2>fails.err
if [ $? -eq 4 ] && grep -q '^clubio-dr: wrong passphrase or corrupt archive$' fails.err && grep -q '^HINT:' fails.err; then ok; else fail "wrong passphrase message: $(cat fails.err)"; fi
# without --gunzip the padding is all there is (a wrong key passes it 1 time in 256): of three
# wrong passphrases at least one is detected, and every detection leaves no file
detected=0
for p in one two three; do
    rm -f fails/x
    if W_PASS="wrong $p" "$BIN" decrypt --pass-env W_PASS -i o1.65537 -o fails/x 2>/dev/null; then :; else
        detected=$((detected + 1))
        [ -e fails/x ] && fail "file left after wrong passphrase"
    fi
done
if [ $detected -ge 1 ]; then ok; else fail "wrong passphrase never detected without --gunzip"; fi
# truncated at a block boundary and inside the header
head -c 10 o1.1000 >fails/t.enc
if "$BIN" decrypt --pass-env K -i fails/t.enc -o fails/y 2>/dev/null || [ -e fails/y ]; then fail "header truncation"; else ok; fi
# missing passphrase: a configuration error (status 3), naming the variable
if "$BIN" decrypt --pass-env CLUBIO_SURELY_UNSET -i o1.1 2>fails.err >/dev/null; then fail "missing passphrase accepted"; else
    [ $? -eq 3 ] && grep -q CLUBIO_SURELY_UNSET fails.err && ok || fail "missing passphrase: $(cat fails.err)"
fi
# usage: help, unknown flags, no passphrase on argv
check "help encrypt" sh -c "'$BIN' help encrypt | grep -q 'usage: clubio-dr encrypt'"
check "decrypt --help" sh -c "'$BIN' decrypt --help | grep -q 'usage: clubio-dr decrypt'"
if "$BIN" encrypt --pass secret -i in.1 >/dev/null 2>&1; then fail "--pass accepted"; else [ $? -eq 2 ] && ok || fail "--pass status"; fi

# nothing was ever written to TMPDIR
if [ -z "$(ls -A "$TMPDIR")" ]; then ok; else fail "temp files in TMPDIR: $(ls -A "$TMPDIR")"; fi
# and no temp files next to outputs
if ls -A "$W" | grep -q '\.tmp-'; then fail "temp files left in $W"; else ok; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
