// The dispatcher's pages. The workspace and the incident page listen to /command/events (server-
// sent events) and, on each change, fetch their live fragment again with htmx: no reload, no
// extension. Maps draw the zones from /api/v1/regions.geojson without any basemap (government
// intranets are offline); settings.tile_url adds one.
(function () {
  "use strict";

  function readJson(id) {
    var element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }

  var config = readJson("command-map-config") || {};
  var msg = readJson("command-messages") || {};
  var LEVEL_COLOURS = { breached: "#c53030", warn: "#d69e2e", ok: "#2f855a", none: "#3182ce" };
  var RESPONDER_COLOURS = { available: "#38a169", busy: "#dd6b20", off: "#a0aec0" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c];
    });
  }

  function baseMap(element) {
    var map = L.map(element, { preferCanvas: true, zoomSnap: 0.5, minZoom: 10, maxZoom: 20 });
    map.setView(config.centre || [29.285, 106.26], 13);
    if (config.tileUrl) { L.tileLayer(config.tileUrl, { maxZoom: 20 }).addTo(map); }
    return map;
  }

  function loadZones(map, fit) {
    return fetch("/api/v1/regions.geojson?level=zone",
                 { credentials: "same-origin", headers: { "Accept": "application/geo+json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data || !data.features.length) { return null; }
        var layer = L.geoJSON(data, {
          style: { color: "#4a5568", weight: 1.5, fillColor: "#718096", fillOpacity: 0.05 },
          interactive: false,
          onEachFeature: function (feature, featureLayer) {
            featureLayer.bindTooltip(escapeHtml(feature.properties.name),
                                     { permanent: true, direction: "center", className: "zone-label" });
          },
        }).addTo(map);
        // The container may have settled its size after the map was made (flex layouts).
        map.invalidateSize();
        if (fit) { map.fitBounds(layer.getBounds(), { padding: [12, 12] }); }
        map.getContainer().setAttribute("data-zones", String(data.features.length));
        return layer;
      })
      .catch(function () { return null; });
  }

  // --- countdowns: the server's "time left" keeps running between refreshes ---------------------

  function clockText(seconds) {
    var left = Math.abs(seconds);
    var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return (seconds < 0 ? msg.over : msg.left) + " " + (h ? h + ":" + pad(m) + ":" + pad(s)
                                                           : m + ":" + pad(s));
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll(".countdown[data-seconds-left]").forEach(function (element) {
      if (!element.dataset.t0) { element.dataset.t0 = String(now); }
      var start = parseInt(element.dataset.secondsLeft, 10);
      if (Math.abs(start) >= 86400 || !msg.left) { return; }  // days away: the text stays
      var seconds = start - Math.floor((now - parseInt(element.dataset.t0, 10)) / 1000);
      element.textContent = clockText(seconds);
      if (seconds < 0 && !element.classList.contains("level-breached")) {
        element.classList.remove("level-ok", "level-warn");
        element.classList.add("level-breached");
      }
    });
  }
  setInterval(tick, 1000);

  // --- live updates -----------------------------------------------------------------------------

  function listen(stampOf, onChange, statusElement) {
    if (typeof EventSource === "undefined") { return; }
    var source = new EventSource("/command/events?since=" + encodeURIComponent(stampOf()));
    function show(live) {
      if (!statusElement) { return; }
      statusElement.textContent = statusElement.dataset[live ? "live" : "offline"];
      statusElement.classList.toggle("online", live);
      statusElement.classList.toggle("connecting", !live);
    }
    source.addEventListener("open", function () { show(true); });
    source.addEventListener("error", function () { show(false); });  // it reconnects by itself
    source.addEventListener("change", function (event) { show(true); onChange(event.data); });
    window.addEventListener("beforeunload", function () { source.close(); });
  }

  // --- the workspace ------------------------------------------------------------------------------

  var workspaceMap = document.getElementById("command-map");
  if (workspaceMap && typeof L !== "undefined") {
    var map = baseMap(workspaceMap);
    loadZones(map, true);
    var incidents = L.layerGroup().addTo(map);
    var responders = L.layerGroup().addTo(map);

    var drawMarkers = function () {
      var data = readJson("command-markers") || { incidents: [], responders: [] };
      incidents.clearLayers();
      responders.clearLayers();
      data.responders.forEach(function (r) {
        var colour = r.stale ? RESPONDER_COLOURS.off : (RESPONDER_COLOURS[r.state] || "#718096");
        L.circleMarker([r.lat, r.lon], { radius: 5, color: "#fff", weight: 1.5, fillColor: colour,
                                         fillOpacity: 1 })
          .bindTooltip(escapeHtml(r.name) + " · " + escapeHtml(msg[r.state] || r.state)
                       + (r.stale ? " · " + escapeHtml(msg.stale) : ""))
          .addTo(responders);
      });
      data.incidents.forEach(function (i) {
        L.circleMarker([i.lat, i.lon], { radius: i.urgency === 1 ? 10 : 8, color: "#1a202c",
                                         weight: 1.5, fillColor: LEVEL_COLOURS[i.level] || "#3182ce",
                                         fillOpacity: 0.9 })
          .bindPopup("<a href=\"/command/incidents/" + i.id + "\">" + escapeHtml(i.number)
                     + "</a><br>" + escapeHtml(i.title))
          .addTo(incidents);
      });
      workspaceMap.setAttribute("data-incident-markers", String(data.incidents.length));
      workspaceMap.setAttribute("data-responder-markers", String(data.responders.length));
    };
    drawMarkers();
    tick();

    var refreshing = false, again = false;
    var refresh = function () {
      if (refreshing) { again = true; return; }
      refreshing = true;
      htmx.ajax("GET", "/command/queue", { target: "#command-live", swap: "outerHTML" })
        .then(function () {
          drawMarkers();
          tick();
          refreshing = false;
          if (again) { again = false; refresh(); }
        }, function () { refreshing = false; });
    };
    listen(function () { return document.getElementById("command-live").dataset.stamp; },
           refresh, document.getElementById("live-status"));
  }

  // --- one incident -------------------------------------------------------------------------------

  var incidentMap = document.getElementById("incident-map");
  if (incidentMap && typeof L !== "undefined") {
    var one = baseMap(incidentMap);
    var lon = parseFloat(incidentMap.dataset.lon), lat = parseFloat(incidentMap.dataset.lat);
    var located = isFinite(lon) && isFinite(lat);
    loadZones(one, !located);
    if (located) {
      L.circleMarker([lat, lon], { radius: 9, color: "#1a202c", weight: 2, fillColor: "#c53030",
                                   fillOpacity: 0.9 }).addTo(one);
      one.setView([lat, lon], 15);
    }
  }
  var page = document.querySelector(".incident-page");
  if (page) {
    tick();
    var statusUrl = "/command/incidents/" + page.dataset.incidentId + "/status";
    listen(function () { return page.dataset.stamp; }, function (stamp) {
      page.dataset.stamp = stamp;
      htmx.ajax("GET", statusUrl, { target: "#incident-status", swap: "outerHTML" })
        .then(function () {
          tick();
          var fresh = document.getElementById("incident-status");
          if (fresh && fresh.dataset.version !== page.dataset.version) {
            // The buttons were drawn for the old version; say so rather than redraw under a hand.
            document.getElementById("incident-moved").hidden = false;
          }
        });
    }, null);
  }

  // --- the entry form: click the map to place the incident ----------------------------------------

  var entryMap = document.getElementById("entry-map");
  if (entryMap && typeof L !== "undefined") {
    var pick = baseMap(entryMap);
    loadZones(pick, true);
    var lonInput = document.getElementById("lon"), latInput = document.getElementById("lat");
    var crsInput = document.getElementById("crs");
    var marker = null;
    var place = function (at) {
      if (marker) { marker.setLatLng(at); } else {
        marker = L.circleMarker(at, { radius: 9, color: "#1a202c", weight: 2, fillColor: "#c53030",
                                      fillOpacity: 0.9 }).addTo(pick);
      }
    };
    pick.on("click", function (event) {
      lonInput.value = event.latlng.lng.toFixed(6);
      latInput.value = event.latlng.lat.toFixed(6);
      crsInput.value = "wgs84";  // the outlines are WGS-84, so a click is too
      place(event.latlng);
    });
    var typed = function () {
      var x = parseFloat(lonInput.value), y = parseFloat(latInput.value);
      if (isFinite(x) && isFinite(y) && crsInput.value === "wgs84") { place([y, x]); }
    };
    lonInput.addEventListener("change", typed);
    latInput.addEventListener("change", typed);
    typed();
  }
  var entryForm = document.getElementById("entry-form");
  if (entryForm) {
    var policeRow = document.getElementById("police-ref-row");
    var showPolice = function () {
      var chosen = entryForm.querySelector("input[name=channel]:checked");
      policeRow.hidden = !(chosen && chosen.value === "police_110");
    };
    entryForm.querySelectorAll("input[name=channel]").forEach(function (radio) {
      radio.addEventListener("change", showPolice);
    });
    showPolice();
    // Only the chosen category's extra questions are shown, asked and sent.
    var category = document.getElementById("category");
    var showQuestions = function () {
      entryForm.querySelectorAll("fieldset.questions").forEach(function (fieldset) {
        var mine = fieldset.dataset.category === category.value;
        fieldset.hidden = !mine;
        fieldset.disabled = !mine;
      });
    };
    category.addEventListener("change", showQuestions);
    showQuestions();
  }
}());
