# The client's example dashboard (client-js/examples/dashboard) with the
# browser bundle it loads (client-js/dist/browser/ferry.min.js), built here
# with `npm ci && npm run build`, served by nginx on port 80.
#
#   docker build -f docker/dashboard.Dockerfile -t ferry-dashboard .   (from the repository root)
#
# The page is at /examples/dashboard/ (/ redirects there); it connects to
# ws://<page host>:8080/ws unless given ?url=...&topic=...

FROM node:20-bookworm-slim AS build
WORKDIR /client-js
COPY client-js/package.json client-js/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY client-js/ ./
RUN npm run build

FROM nginx:1.28-alpine
COPY --from=build /client-js/examples/dashboard /usr/share/nginx/html/examples/dashboard
COPY --from=build /client-js/dist/browser /usr/share/nginx/html/dist/browser
COPY docker/dashboard/index.html /usr/share/nginx/html/index.html
