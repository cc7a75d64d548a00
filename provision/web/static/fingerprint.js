// Browser fingerprint for the pairing event: a hash of stable browser properties.
// It helps support tell "same phone tried twice" from "someone else scanned the box";
// it is not an identity and not used for any decision.
(function () {
  "use strict";
  var field = document.getElementById("fingerprint");
  if (!field) { return; }
  var props = [
    navigator.userAgent, navigator.language, (navigator.languages || []).join(","),
    navigator.platform, navigator.hardwareConcurrency, navigator.maxTouchPoints,
    screen.width + "x" + screen.height + "x" + screen.colorDepth, window.devicePixelRatio,
    Intl.DateTimeFormat().resolvedOptions().timeZone
  ].join("|");

  function fnv1a64(text) {  // fallback where SubtleCrypto is unavailable (plain http)
    var h1 = 0x811c9dc5, h2 = 0x01000193;
    for (var i = 0; i < text.length; i++) {
      var c = text.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x01000193) >>> 0;
      h2 = Math.imul(h2 ^ c, 0x811c9dc5) >>> 0;
    }
    return "fnv:" + ("00000000" + h1.toString(16)).slice(-8) + ("00000000" + h2.toString(16)).slice(-8);
  }

  function set(value) { field.value = value; }
  set(fnv1a64(props));
  if (window.crypto && crypto.subtle && window.TextEncoder) {
    crypto.subtle.digest("SHA-256", new TextEncoder().encode(props)).then(function (buf) {
      set("sha256:" + Array.prototype.map.call(new Uint8Array(buf), function (b) {
        return ("0" + b.toString(16)).slice(-2);
      }).join(""));
    }, function () {});
  }
})();
