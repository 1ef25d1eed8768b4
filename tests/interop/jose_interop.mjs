// Gatepass passes seen by an independent JOSE implementation (npm `jose`).
//
// Driven by tests/unit/credentials/test_jose_interop.py: one JSON request on stdin, one JSON
// answer on stdout. Nothing here imports or copies Gatepass code: the scope hash is computed
// from the written rule (base64url SHA-256 of the sorted-key, whitespace-free JSON of
// {action, resource, amount, currency}).
//
//   node jose_interop.mjs verify   {token, jwks, audience, issuer, typ, now}
//     -> {ok: true, payload, protectedHeader} | {ok: false, code, message}
//   node jose_interop.mjs sign     {issuer, subject, audience, iat, ttl, intent_id, owner,
//                                   policy_version, action, resource, amount, currency, typ}
//     -> {token, jwks, kid}
//   node jose_interop.mjs dpop-verify {proof}
//     -> {ok: true, payload, protectedHeader, jkt} | {ok: false, code, message}
//        (the proof's signature checked with the key in its own header, as RFC 9449 says)
//   node jose_interop.mjs dpop-sign   {jwk (private OKP), token, htm, htu, iat}
//     -> {proof}: a DPoP proof made by jose, ath computed here from the written rule

import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  EmbeddedJWK,
  exportJWK,
  generateKeyPair,
  importJWK,
  jwtVerify,
  SignJWT,
} from "jose";

function canonicalJson(value) {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(",")}}`;
}

function scopeHash({ action, resource, amount, currency }) {
  const scope = {
    action,
    resource,
    amount: amount ?? null, // already in plain decimal notation without trailing zeros
    currency: currency == null ? null : currency.toUpperCase(),
  };
  return createHash("sha256").update(canonicalJson(scope), "utf8").digest("base64url");
}

async function verify(req) {
  try {
    const { payload, protectedHeader } = await jwtVerify(req.token, createLocalJWKSet(req.jwks), {
      algorithms: ["EdDSA"],
      typ: req.typ,
      audience: req.audience,
      issuer: req.issuer,
      currentDate: new Date(req.now * 1000),
      requiredClaims: ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"],
    });
    return { ok: true, payload, protectedHeader };
  } catch (err) {
    return { ok: false, code: err.code ?? err.name, message: String(err.message) };
  }
}

async function sign(req) {
  const { publicKey, privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk, "sha256");
  const detail = {
    type: "gatepass_action",
    actions: [req.action],
    locations: [req.audience],
    identifier: req.resource,
  };
  if (req.amount != null) {
    detail.amount = { value: req.amount, currency: req.currency.toUpperCase() };
  }
  const token = await new SignJWT({
    intent_id: req.intent_id,
    scope: scopeHash(req),
    authorization_details: [detail],
    owner: req.owner,
    policy_version: req.policy_version,
  })
    .setProtectedHeader({ alg: "EdDSA", kid, typ: req.typ })
    .setIssuer(req.issuer)
    .setSubject(req.subject)
    .setAudience(req.audience)
    .setIssuedAt(req.iat)
    .setNotBefore(req.iat)
    .setExpirationTime(req.iat + req.ttl)
    .setJti(randomUUID())
    .sign(privateKey);
  return { token, kid, jwks: { keys: [{ ...jwk, kid, use: "sig", alg: "EdDSA" }] } };
}

async function dpopVerify(req) {
  try {
    const { payload, protectedHeader } = await jwtVerify(req.proof, EmbeddedJWK, {
      algorithms: ["EdDSA"],
      typ: "dpop+jwt",
      currentDate: new Date(req.now * 1000),
      requiredClaims: ["jti", "htm", "htu", "iat"],
    });
    const jkt = await calculateJwkThumbprint(protectedHeader.jwk, "sha256");
    return { ok: true, payload, protectedHeader, jkt };
  } catch (err) {
    return { ok: false, code: err.code ?? err.name, message: String(err.message) };
  }
}

async function dpopSign(req) {
  const privateKey = await importJWK(req.jwk, "EdDSA");
  const { d, ...publicJwk } = req.jwk;
  const proof = await new SignJWT({
    htm: req.htm,
    htu: req.htu,
    ath: createHash("sha256").update(req.token, "ascii").digest("base64url"),
  })
    .setProtectedHeader({ alg: "EdDSA", typ: "dpop+jwt", jwk: publicJwk })
    .setIssuedAt(req.iat)
    .setJti(randomUUID())
    .sign(privateKey);
  return { proof };
}

const modes = { verify, sign, "dpop-verify": dpopVerify, "dpop-sign": dpopSign };
const mode = modes[process.argv[2]];
if (!mode) {
  process.stderr.write(`usage: node jose_interop.mjs (${Object.keys(modes).join("|")}) < request.json\n`);
  process.exit(2);
}
const answer = await mode(JSON.parse(readFileSync(0, "utf8")));
process.stdout.write(`${JSON.stringify(answer)}\n`);
