#!/usr/bin/env bash
# Test certificates and SuperNode keys for a localhost FedMix federation on Flower.
#
#   scripts/make_certs.sh OUT_DIR [NUM_SITES] [EXTRA_UNREGISTERED_KEYS]
#
# Writes into OUT_DIR:
#   ca.crt / ca.key            a self-signed certificate authority (test only)
#   server.pem / server.key    the SuperLink's TLS certificate for 127.0.0.1 / localhost, signed by
#                              the CA (SuperNodes and `flwr` trust ca.crt)
#   site_<i> / site_<i>.pub    SuperNode authentication key pairs (ECDSA P-384, OpenSSH format)
#   intruder / intruder.pub    a key pair that is NOT registered (to show a refused site)
#
# Production: get the SuperLink's certificate from your institution's CA for the coordinator's
# real host name (not this script), and let each hospital generate its own key pair on its own
# machine and send only the .pub file to the coordinator, who registers it.
set -euo pipefail
OUT=${1:?usage: make_certs.sh OUT_DIR [NUM_SITES]}
NUM=${2:-3}
mkdir -p "$OUT"
cd "$OUT"

# ECDSA P-384 keys (fast to generate; RSA works as well).
openssl ecparam -name secp384r1 -genkey -noout -out ca.key
openssl req -new -x509 -key ca.key -sha384 -days 30 -subj "/CN=fedmix-test-ca" -out ca.crt

openssl ecparam -name secp384r1 -genkey -noout -out server.key
cat > server.cnf <<CNF
[req]
distinguished_name = dn
req_extensions = v3
prompt = no
[dn]
CN = localhost
[v3]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = @alt
[alt]
DNS.1 = localhost
IP.1 = 127.0.0.1
IP.2 = ::1
CNF
openssl req -new -key server.key -out server.csr -config server.cnf
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem \
  -days 30 -sha384 -extensions v3 -extfile server.cnf 2>/dev/null
rm -f server.csr

for i in $(seq 0 $((NUM - 1))) intruder; do
  name=$([ "$i" = intruder ] && echo intruder || echo "site_$i")
  rm -f "$name" "$name.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -f "$name" -C ""
done
chmod 600 ca.key server.key site_* intruder
chmod 644 ./*.pub ca.crt server.pem
echo "certificates and keys in $OUT"
