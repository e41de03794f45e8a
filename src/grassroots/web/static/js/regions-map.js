// The regions map: zones (filled), grids (outlined), micro-grids and buildings when zoomed in.
// Clicking the map or submitting lon/lat asks /api/v1/regions/locate for the path of regions.
// No basemap is needed (government intranets are offline); settings.tile_url adds one.
(function () {
  "use strict";

  var element = document.getElementById("regions-map");
  if (!element || typeof L === "undefined") { return; }
  var config = JSON.parse(document.getElementById("regions-map-config").textContent);
  var msg = JSON.parse(document.getElementById("regions-map-messages").textContent);
  var resultBox = document.getElementById("locate-result");

  var ZONE_COLOURS = ["#dd6b20", "#38a169", "#3182ce", "#805ad5", "#d53f8c", "#d69e2e", "#319795",
                      "#e53e3e", "#5a67d8", "#2f855a"];
  var map = L.map(element, { preferCanvas: true, zoomSnap: 0.5, minZoom: 10, maxZoom: 20 });
  map.setView([29.39, 106.27], 13);
  if (config.tileUrl) {
    L.tileLayer(config.tileUrl, { maxZoom: 20 }).addTo(map);
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c];
    });
  }

  function levelName(level) { return msg[level] || level; }

  function style(level) {
    return function (feature) {
      if (level === "zone") {
        var colour = ZONE_COLOURS[feature.properties.id % ZONE_COLOURS.length];
        return { color: colour, weight: 3, fillColor: colour, fillOpacity: 0.25 };
      }
      if (level === "grid") { return { color: "#2b6cb0", weight: 1.5, fill: false }; }
      if (level === "micro_grid") {
        return { color: "#718096", weight: 0.8, dashArray: "3 3", fill: false };
      }
      return { color: "#2d3748", weight: 0.8, fillColor: "#4a5568", fillOpacity: 0.6 };
    };
  }

  var layers = {};
  var wanted = { zone: true, grid: true, micro_grid: true, building: true };
  var minZoom = { micro_grid: config.microGridMinZoom, building: config.buildingMinZoom };

  function showByZoom() {
    Object.keys(layers).forEach(function (level) {
      var visible = wanted[level] && (!minZoom[level] || map.getZoom() >= minZoom[level]);
      if (visible && !map.hasLayer(layers[level])) { map.addLayer(layers[level]); }
      if (!visible && map.hasLayer(layers[level])) { map.removeLayer(layers[level]); }
    });
  }

  var overlayControl = L.control.layers(null, null, { collapsed: false }).addTo(map);
  var bounds = L.latLngBounds([]);
  var pending = config.levels.length;

  config.levels.forEach(function (level) {
    fetch("/api/v1/regions.geojson?level=" + encodeURIComponent(level),
          { headers: { "Accept": "application/geo+json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.status); }
        return response.json();
      })
      .then(function (data) {
        var layer = L.geoJSON(data, { style: style(level), interactive: false });
        layers[level] = layer;
        element.setAttribute("data-count-" + level.replace("_", "-"), String(data.features.length));
        if (data.features.length && level !== "building") { bounds.extend(layer.getBounds()); }
      })
      .catch(function () { /* a level the user may not see, or none stored */ })
      .then(function () {
        pending -= 1;
        if (pending === 0) {
          config.levels.forEach(function (name) {  // in a fixed order, whatever loaded first
            if (layers[name]) { overlayControl.addOverlay(layers[name], levelName(name)); }
          });
          if (bounds.isValid()) { map.fitBounds(bounds, { padding: [10, 10] }); }
          else { resultBox.textContent = msg.empty; }
          showByZoom();
          element.setAttribute("data-loaded", "true");  // for people's tools and browser tests
        }
      });
  });

  map.on("zoomend", showByZoom);
  map.on("overlayadd", function (e) { levelOf(e.layer, true); });
  map.on("overlayremove", function (e) { levelOf(e.layer, false); });
  function levelOf(layer, on) {
    Object.keys(layers).forEach(function (level) {
      if (layers[level] === layer) { wanted[level] = on; }
    });
  }

  var highlight = null;
  var marker = null;

  function describe(path) {
    var deepest = path[0];
    var html = "<div class=\"region-popup\"><strong>" + escapeHtml(deepest.name) + "</strong> · "
      + escapeHtml(levelName(deepest.level)) + "<br>" + escapeHtml(msg.code) + ": "
      + escapeHtml(deepest.code) + "<ol class=\"path\">";
    path.forEach(function (ref) {
      html += "<li>" + escapeHtml(levelName(ref.level)) + " " + escapeHtml(ref.name) + "</li>";
    });
    return html + "</ol></div>";
  }

  function showRegion(regionId) {
    fetch("/api/v1/regions/" + regionId, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (region) {
        if (!region) { return; }
        if (highlight) { map.removeLayer(highlight); }
        highlight = L.geoJSON(region.geometry, {
          style: { color: "#b3261e", weight: 3, fillOpacity: 0.1 }, interactive: false,
        }).addTo(map);
      });
  }

  function locate(lon, lat, crs, pan) {
    var url = "/api/v1/regions/locate?lon=" + encodeURIComponent(lon) + "&lat="
      + encodeURIComponent(lat) + "&crs=" + encodeURIComponent(crs);
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      })
      .then(function (answer) {
        var at = answer.ok ? L.latLng(answer.body.wgs84[1], answer.body.wgs84[0])
                           : L.latLng(lat, lon);
        if (marker) { map.removeLayer(marker); }
        marker = L.circleMarker(at, { radius: 6, color: "#b3261e", fillOpacity: 0.9 }).addTo(map);
        if (!answer.ok) {
          var text = (answer.body.error && answer.body.error.message) || msg.outside;
          marker.bindPopup(escapeHtml(text)).openPopup();
          resultBox.textContent = text;
          if (highlight) { map.removeLayer(highlight); highlight = null; }
          if (pan) { map.panTo(at); }
          return;
        }
        var html = describe(answer.body.path);
        marker.bindPopup(html).openPopup();
        resultBox.innerHTML = html;
        showRegion(answer.body.path[0].id);
        if (pan) { map.setView(at, Math.max(map.getZoom(), 16)); }
      })
      .catch(function () { resultBox.textContent = msg.failed; });
  }

  map.on("click", function (e) {
    locate(e.latlng.lng.toFixed(7), e.latlng.lat.toFixed(7), "wgs84", false);
  });

  document.getElementById("locate-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var lon = parseFloat(document.getElementById("locate-lon").value);
    var lat = parseFloat(document.getElementById("locate-lat").value);
    if (!isFinite(lon) || !isFinite(lat)) { resultBox.textContent = msg.badNumber; return; }
    resultBox.textContent = msg.loading;
    locate(lon, lat, document.getElementById("locate-crs").value, true);
  });
}());
