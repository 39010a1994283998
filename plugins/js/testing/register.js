// `node --import <this file> --test`: plugins import 'fluxgate:plugin/host@0.2.0',
// which only a gateway provides; under Node it resolves to the in-memory fake here.
import { register } from 'node:module';

register('./hooks.js', import.meta.url);
